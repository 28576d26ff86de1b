# syntax=docker/dockerfile:1
#
# keel's production image: every keel process (workers, API, migrations, LLM simulator) runs
# from this one image; docker-compose.yml picks the process with `command:`.
#
#   docker build -t keel:local .
#   docker run --rm keel:local --help
#
# Two stages: `builder` has uv and installs the locked dependency set plus keel into /app/.venv;
# `runtime` is a clean python:3.11-slim without uv that receives /app (the virtualenv, keel's
# sources, alembic.ini and migrations/) and runs as an unprivileged user. keel is installed in
# editable mode on purpose: infra/migrate.py finds alembic.ini and migrations/ relative to the
# source tree, so they must sit next to the packages. Both stages use the same base image, so
# the venv's interpreter symlink (/usr/local/bin/python3.11) resolves in the runtime stage.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

# --------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

COPY --from=uv /uv /uvx /bin/

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# 1) Third-party dependencies only, straight from uv.lock. This layer is rebuilt only when the
#    lock file or pyproject.toml changes, not on every source edit.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project

# 2) keel itself (sources filtered by .dockerignore). --frozen: fail instead of re-resolving
#    when uv.lock is out of date; --no-dev: no test or lint tooling in the image.
COPY . /app
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev

# --------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="keel" \
      org.opencontainers.image.description="Durable LLM workflows on Temporal"

ARG KEEL_UID=10001
ARG KEEL_GID=10001
RUN groupadd --system --gid "${KEEL_GID}" keel \
 && useradd --system --uid "${KEEL_UID}" --gid keel --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin keel \
 && install -d -o keel -g keel -m 0755 /app/.keel

WORKDIR /app

# Root-owned and read-only for the keel user; only /app/.keel (KEEL_HOME) is writable.
COPY --from=builder /app /app

ENV PATH="/app/.venv/bin:${PATH}" \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KEEL_HOME=/app/.keel \
    KEEL_LOG_FORMAT=json

USER keel:keel

# 8000: keel api · 8081: keel codec-server · 8299: LLM simulator · 9464: worker Prometheus metrics
EXPOSE 8000 8081 8299 9464

ENTRYPOINT ["keel"]
CMD ["--help"]
