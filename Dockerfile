# One image for the whole loop: the trainer (`primer train`), the API
# (`primer serve` / `bentoml serve bentos.service:PrimerService`) and the MLflow
# server (PostgreSQL driver psycopg 3 is a project dependency).
# Built inside the lab by cluster-bootstrap/build-image.sh (BuildKit, no Docker).

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY contract/ contract/
COPY ml/ ml/
COPY promotion/ promotion/
COPY bentos/ bentos/
COPY primer/ primer/
# A regular (non-editable) install, in a venv we copy over, with exactly the
# dependency versions the test suite passed with (constraints.txt).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt /src

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
