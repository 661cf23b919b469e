# One image for the whole loop: the trainer (`primer train`), the API
# (`primer serve` / `bentoml serve bentos.service:PrimerService`) and the MLflow
# server (PostgreSQL driver psycopg 3 is a project dependency).
# Built inside the lab by cluster-bootstrap/build-image.sh (BuildKit, no Docker).

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1
# uv, pinned, from PyPI; only the build stage has it.
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /src
# The dependencies first (a layer that changes only with the lock), exactly the
# versions the test suite passed with (uv.lock), without the dev group...
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY contract/ contract/
COPY ml/ ml/
COPY promotion/ promotion/
COPY bentos/ bentos/
COPY primer/ primer/
# ...then the project itself, a regular (non-editable) install into the venv we copy over.
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11.14-slim-bookworm
# git: the trainer clones the repository and pushes promotion branches.
# Unpinned on purpose: Debian security updates replace old package versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/primer \
    --shell /usr/sbin/nologin primer
COPY --from=build /opt/venv /opt/venv
# The repository files the code reads at runtime (gate policy, pin template,
# the BentoML service module), read-only: the code itself runs from the venv.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY ml/ ml/
COPY promotion/ promotion/
COPY bentos/ bentos/
COPY primer/ primer/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    BENTOML_DO_NOT_TRACK=true
USER 10001:10001
EXPOSE 3000 5000
CMD ["primer", "--help"]
