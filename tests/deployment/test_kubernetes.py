"""The Kubernetes manifests (deploy/kubernetes), validated offline, as a cluster would see them.

The overlay is rendered the way ``kubectl apply -k`` renders it (namespace, image, the Secret
generated from the env file — here its example; no kustomize binary needed) and every object is
validated against the Kubernetes 1.33 JSON schemas in their strict form (an unknown field is an
error, as ``kubectl apply --validate=strict`` makes it). The schemas are vendored beside this
file as ``kubernetes-1.33-definitions.json.gz``: ``_definitions.json`` of
``v1.33.0-local-strict`` from the PyPI package ``kubernetes-validate`` 1.37.0 (Apache-2.0, see
``kubernetes-validate.LICENSE``), gzipped; the SHA-256 below pins the uncompressed copy. To
refresh it: ``pip download --no-deps kubernetes-validate==<ver>``, unzip, gzip that file here,
update ``K8S_SCHEMA_SHA256``. KEDA's ScaledObject is a custom resource with no such schema:
``keda-scaledobject.schema.json`` holds the fields of KEDA's specification that keel may use.

Then what a schema cannot see: every queue has a worker Deployment that KEDA scales on that
queue's backlog, probes hit the endpoints keel serves, every reference (ConfigMap, Secret,
selector, scale target, port) resolves, and every setting is one keel reads.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from infra.settings import BATCH_TASK_QUEUE, INTERACTIVE_TASK_QUEUE, KeelSettings

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "production"
K8S_SCHEMA = Path(__file__).with_name("kubernetes-1.33-definitions.json.gz")
K8S_SCHEMA_SHA256 = "c6ac7ea7360edb7fd6fbcfabd1fe272d44e30c5d25621b8af889830f5cb21cd3"
K8S_SCHEMA_ID = "https://kubernetes.io/api/_definitions.json"
KEDA_SCHEMA = Path(__file__).with_name("keda-scaledobject.schema.json")
# KEDA's Temporal scaler (KEDA >= 2.17): its documented metadata.
TEMPORAL_SCALER_METADATA = frozenset(
    {
        "endpoint",
        "endpointFromEnv",
        "namespace",
        "taskQueue",
        "targetQueueSize",
        "activationTargetQueueSize",
        "queueTypes",
        "workerDeploymentName",
        "workerDeploymentBuildId",
        "includeRunningWorkflowCount",
        "workflowTaskQueueForCount",
        "minConnectTimeout",
        "unsafeSsl",
        "tlsServerName",
        "enableTLS",
    }
)
WORKER_QUEUES = (INTERACTIVE_TASK_QUEUE, BATCH_TASK_QUEUE)


# --- Rendering (what `kubectl apply -k` sends) ----------------------------------------------


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization(directory: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return document


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def resources(directory: Path) -> Iterator[dict[str, Any]]:
    spec = kustomization(directory)
    for entry in spec["resources"]:
        target = directory / entry
        if target.is_dir():
            yield from resources(target)
            continue
        for document in load_documents(target):
            for pairs in spec.get("labels", []):
                labels = document.setdefault("metadata", {}).setdefault("labels", {})
                labels.update(pairs["pairs"])
            yield document


def render(secret_env: Path = OVERLAY / "keel-secrets.env.example") -> list[dict[str, Any]]:
    """The overlay as kustomize builds it, with the Secret from ``secret_env``."""
    spec = kustomization(OVERLAY)
    documents = list(resources(OVERLAY))
    (generator,) = spec["secretGenerator"]
    assert generator["envs"] == ["keel-secrets.env"]
    documents.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": generator["name"]},
            "type": "Opaque",
            "stringData": read_env_file(secret_env),
        }
    )
    (image,) = spec["images"]
    for document in documents:
        if document["kind"] != "Namespace":
            document["metadata"]["namespace"] = spec["namespace"]
        for container in containers(document):
            if container["image"] == image["name"]:
                container["image"] = f"{image['newName']}:{image['newTag']}"
    return documents


def pod_spec(document: dict[str, Any]) -> dict[str, Any] | None:
    if document["kind"] in ("Deployment", "Job"):
        spec: dict[str, Any] = document["spec"]["template"]["spec"]
        return spec
    return None


def containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(document)
    return list(spec["containers"]) if spec else []


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render()


def named(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


# --- Schemas --------------------------------------------------------------------------------


@cache
def k8s_definitions() -> dict[str, Any]:
    raw = gzip.decompress(K8S_SCHEMA.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == K8S_SCHEMA_SHA256, "vendored schema changed"
    definitions: dict[str, Any] = json.loads(raw)
    return definitions


@cache
def k8s_registry() -> Registry:
    resource: Resource[Any] = Resource.from_contents(k8s_definitions())
    return Registry().with_resource(K8S_SCHEMA_ID, resource)


def schema_for(document: dict[str, Any]) -> dict[str, Any]:
    if document["apiVersion"] == "keda.sh/v1alpha1":
        keda: dict[str, Any] = json.loads(KEDA_SCHEMA.read_text())
        return keda
    group, _, version = document["apiVersion"].rpartition("/")
    for name, definition in k8s_definitions()["$defs"].items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            if (gvk["group"], gvk["version"], gvk["kind"]) == (group, version, document["kind"]):
                return {"$ref": f"{K8S_SCHEMA_ID}#/$defs/{name}"}
    raise AssertionError(f"no schema for {document['apiVersion']} {document['kind']}")


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema_for(document), registry=k8s_registry())
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_vendored_kubernetes_schema_is_the_pinned_copy() -> None:
    assert "io.k8s.api.apps.v1.Deployment" in k8s_definitions()["$defs"]


def test_every_manifest_matches_its_schema(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted({d["kind"] for d in rendered})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
        "Namespace",
        "PodDisruptionBudget",
        "ScaledObject",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    for document in rendered:
        where = f"{document['kind']}/{document['metadata']['name']}"
        assert schema_errors(document) == [], where


def test_the_schemas_catch_what_a_cluster_would_refuse(rendered: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(named(rendered, "Deployment")["keel-api"])
    deployment["spec"]["replica"] = 2  # a typo: strict validation refuses unknown fields
    assert any("replica" in error for error in schema_errors(deployment))
    deployment = copy.deepcopy(named(rendered, "Deployment")["keel-api"])
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    assert schema_errors(deployment)
    scaled = copy.deepcopy(named(rendered, "ScaledObject")["keel-worker-batch"])
    scaled["spec"]["triggers"][0]["metadata"]["targetQueueSize"] = 50  # KEDA wants strings
    assert schema_errors(scaled)
    scaled["spec"]["maxReplicas"] = 5  # HPA's name, not KEDA's
    assert any("maxReplicas" in error for error in schema_errors(scaled))


# --- What a schema cannot see ---------------------------------------------------------------


def test_the_kustomizations_list_every_manifest() -> None:
    listed = {BASE / entry for entry in kustomization(BASE)["resources"]}
    assert listed == set(BASE.glob("*.yaml")) - {BASE / "kustomization.yaml"}
    for entry in kustomization(OVERLAY)["resources"]:
        assert (OVERLAY / entry).exists(), entry
    # The filled-in Secret stays out of git; its example is what the test renders.
    assert "keel-secrets.env" in (OVERLAY / ".gitignore").read_text().split()


def test_each_task_queue_has_a_worker_that_keda_scales_on_its_backlog(
    rendered: list[dict[str, Any]],
) -> None:
    deployments = named(rendered, "Deployment")
    scaled = named(rendered, "ScaledObject")
    settings = named(rendered, "ConfigMap")["keel-settings"]["data"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()} == {
        f"keel-worker-{queue.removeprefix('keel-')}" for queue in WORKER_QUEUES
    }
    for queue in WORKER_QUEUES:
        name = f"keel-worker-{queue.removeprefix('keel-')}"
        (container,) = containers(deployments[name])
        assert container["args"] == ["worker", "--queue", queue]
        scaler = scaled[name]["spec"]
        assert (
            scaler["minReplicaCount"] >= 1 and scaler["maxReplicaCount"] > scaler["minReplicaCount"]
        )
        (trigger,) = scaler["triggers"]
        assert trigger["type"] == "temporal"
        metadata = trigger["metadata"]
        assert set(metadata) <= TEMPORAL_SCALER_METADATA, set(metadata) - TEMPORAL_SCALER_METADATA
        assert metadata["taskQueue"] == queue
        assert metadata["namespace"] == settings["TEMPORAL_NAMESPACE"]
        assert set(metadata["queueTypes"].split(",")) == {"workflow", "activity"}
        assert int(metadata["targetQueueSize"]) > 0
        # KEDA reads the endpoint from the scale target's container environment.
        assert metadata["endpointFromEnv"] in environment_of(container, rendered)
    # The interactive bulkhead stays warm and scales at a smaller backlog than batch's.
    interactive = scaled["keel-worker-interactive"]["spec"]
    batch = scaled["keel-worker-batch"]["spec"]
    assert interactive["minReplicaCount"] >= 2
    assert int(interactive["triggers"][0]["metadata"]["targetQueueSize"]) < int(
        batch["triggers"][0]["metadata"]["targetQueueSize"]
    )


def environment_of(container: dict[str, Any], rendered: list[dict[str, Any]]) -> dict[str, str]:
    """The variables a container gets: its env and everything its envFrom sources hold."""
    found: dict[str, str] = {}
    config_maps, secrets = named(rendered, "ConfigMap"), named(rendered, "Secret")
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            found |= config_maps[source["configMapRef"]["name"]]["data"]
        else:
            found |= secrets[source["secretRef"]["name"]]["stringData"]
    for variable in container.get("env", []):
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference is not None:
            secret = secrets[reference["name"]]["stringData"]
            assert reference["key"] in secret or reference.get("optional"), reference
            if reference["key"] in secret:
                found[variable["name"]] = secret[reference["key"]]
        else:
            found[variable["name"]] = variable["value"]
    return found


def test_workers_serve_metrics_and_health_where_probes_and_prometheus_look(
    rendered: list[dict[str, Any]],
) -> None:
    settings = KeelSettings()
    for name, deployment in named(rendered, "Deployment").items():
        spec = deployment["spec"]
        template = spec["template"]
        assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        (container,) = containers(deployment)
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["limits"]["memory"]
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            check = container[probe]["httpGet"]
            assert check["port"] in ports, (name, probe)
        path = container["readinessProbe"]["httpGet"]["path"]
        if container["args"][0] == "worker":
            environment = environment_of(container, rendered)
            port = int(environment["KEEL_METRICS_PORT"])
            assert environment["KEEL_METRICS_HOST"] == "0.0.0.0"  # reachable by the kubelet
            assert ports["metrics"] == port == settings.metrics_port
            annotations = template["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert int(annotations["prometheus.io/port"]) == port
            assert annotations["prometheus.io/path"] == "/metrics"
            assert path == "/healthz"  # infra/metrics.py serves it beside /metrics
            # SIGTERM: time for in-flight activities, as docker-compose's stop_grace_period.
            assert pod["terminationGracePeriodSeconds"] >= 60
        elif container["args"][0] == "api":
            assert path == "/healthz"  # api/app.py
        else:
            assert container["args"][0] == "codec-server" and path == "/health"


def test_every_reference_resolves(rendered: list[dict[str, Any]]) -> None:
    deployments = named(rendered, "Deployment")
    for pdb in named(rendered, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        matches = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, pdb["metadata"]["name"]
    for service in named(rendered, "Service").values():
        matches = [
            d
            for d in deployments.values()
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, service["metadata"]["name"]
        port_names = {p["name"] for c in containers(matches[0]) for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    (hpa,) = named(rendered, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "keel-api" in deployments
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    for workload in [*deployments.values(), *named(rendered, "Job").values()]:
        assert workload["spec"]["template"]["spec"]["serviceAccountName"] == "keel"
        for container in containers(workload):
            environment_of(container, rendered)  # raises on a missing ConfigMap or Secret
            assert container["image"] == "registry.example.com/keel:0.1.0"
    (job,) = named(rendered, "Job").values()
    (migrate,) = containers(job)
    assert migrate["command"] + migrate["args"] == ["alembic", "upgrade", "head"]
    namespaces = {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"}
    assert namespaces == {"keel"}


def test_every_setting_is_one_keel_reads(rendered: list[dict[str, Any]]) -> None:
    known = set()
    for name, field in KeelSettings.model_fields.items():
        alias = field.validation_alias
        known |= set(getattr(alias, "choices", [])) or {f"KEEL_{name.upper()}"}
    settings = named(rendered, "ConfigMap")["keel-settings"]["data"]
    secret_keys = set(read_env_file(OVERLAY / "keel-secrets.env.example"))
    commented = {
        line.lstrip("# ").partition("=")[0]
        for line in (OVERLAY / "keel-secrets.env.example").read_text().splitlines()
        if line.startswith("# ") and "=" in line and line[2:3].isupper()
    }
    assert commented, "the example lists the optional secrets"
    for key in set(settings) | secret_keys | commented:
        assert key in known, f"{key} is not a keel setting"
    assert {"DATABASE_URL", "KEEL_ENCRYPTION_KEYS"} <= secret_keys
    assert not {"DATABASE_URL", "KEEL_ENCRYPTION_KEYS"} & set(settings), "secrets in a ConfigMap"
