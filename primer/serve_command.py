"""``primer serve``: run the BentoML service on this machine.

It becomes ``bentoml serve bentos.service:PrimerService`` (``exec``, no wrapper process
left holding memory or forwarding signals), run from the repository root: exactly the
command the container and the tests use.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from contract.errors import PrimerError
from contract.names import SERVING_PORT
from contract.registry import public_uri
from contract.settings import ServingSettings, child_env
from primer.processes import console_script, require_free_port

SERVICE_IMPORT = "bentos.service:PrimerService"


def serve_command(host: str, port: int) -> list[str]:
    return [console_script("bentoml"), "serve", SERVICE_IMPORT, "--host", host, "--port", str(port)]


def find_service_root(repo: Path) -> Path:
    """The folder holding ``bentos/service.py``: the repo root, else this checkout's root."""
    for cand in (repo, Path(__file__).resolve().parent.parent):
        if (cand / "bentos" / "service.py").is_file():
            return cand
    raise PrimerError("cannot find bentos/service.py; run from the repository root or set PRIMER_REPO_DIR")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0 for all).")
@click.option("--port", type=int, default=SERVING_PORT, show_default=True, help="HTTP port.")
def serve(host: str, port: int) -> None:
    """Serve the pinned model version over HTTP (BentoML), until Ctrl-C.

    Loads models:/spy-direction/<version> named by the pin file
    (PRIMER_PIN_FILE, default promotion/model-version.yaml) from MLFLOW_TRACKING_URI,
    and follows the pin when it changes. The service starts even when nothing is
    pinned or MLflow is down: /readyz answers 503 and /model says why until the
    pinned version is loaded.

    \b
    Routes:
      GET  /predictionForTomorrow?threshold=0.5   UP/DOWN for the next trading day
      POST /predict                               P(up) for your own feature rows
      GET  /model                                 what is served, last error
      GET  /livez /readyz /metrics                probes and Prometheus metrics
    \b
    Environment: MLFLOW_TRACKING_URI, PRIMER_PIN_FILE, PRIMER_DATA_SOURCE
    (yfinance | csv:PATH | synthetic), PRIMER_PIN_POLL_SECONDS (2),
    PRIMER_FEATURE_TTL_SECONDS (3600).
    """
    settings = ServingSettings.load()  # a bad value stops here, not in the service's worker
    require_free_port(port, "--port", host=host)
    root = find_service_root(settings.repo_root())
    # The default pin resolved here, so it does not depend on the service's cwd; a PRIMER_PIN_FILE
    # given is passed as it is (a ConfigMap mount is a symlink that must not be resolved).
    # Its own BentoML home per port: BentoML empties <home>/prometheus_multiproc_dir when it
    # starts, so a second service sharing ~/bentoml would wipe the first one's metrics.
    pin = {} if settings.pin_file else {"PRIMER_PIN_FILE": str(settings.pin_path().resolve())}
    env = child_env(BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=str(settings.service_home(port)), **pin)
    cmd = serve_command(host, port)
    click.echo(f"serving {env['PRIMER_PIN_FILE']} from {public_uri(settings.tracking_uri)} "
               f"on http://{host}:{port}  ({' '.join(cmd[1:])})", err=True)
    os.chdir(root)
    os.execve(cmd[0], cmd, env)
