"""``primer serve``: run the BentoML service on this machine.

This module does not import ``bentos`` (dependencies point bentos -> ml): it runs
``bentoml serve bentos.service:PrimerService`` as a child process from the
repository root, exactly the command the container and the tests use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from primer.processes import PortInUse, console_script, require_free_port
from contract.names import SERVING_PORT
from contract.pin import default_pin_path, repo_root
from contract.registry import public_uri
from contract.registry import tracking_uri as configured_tracking_uri

SERVICE_IMPORT = "bentos.service:PrimerService"


def serve_command(host: str, port: int) -> list[str]:
    return [console_script("bentoml"), "serve", SERVICE_IMPORT, "--host", host, "--port", str(port)]


def find_service_root(start: Path | None = None) -> Path:
    """The folder holding ``bentos/service.py``: the repo root, else this checkout's root."""
    for cand in (start or repo_root(), Path(__file__).resolve().parent.parent):
        if (cand / "bentos" / "service.py").is_file():
            return cand
    raise click.ClickException("cannot find bentos/service.py; run from the repository root or set PRIMER_REPO_DIR")


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
    try:
        require_free_port(port, "--port", host=host)
    except PortInUse as exc:
        raise click.ClickException(str(exc)) from exc
    root = find_service_root()
    env = dict(os.environ)
    # Resolve the pin here so a relative default does not depend on the child's cwd.
    env.setdefault("PRIMER_PIN_FILE", str(default_pin_path().resolve()))
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    cmd = serve_command(host, port)
    click.echo(f"serving {env['PRIMER_PIN_FILE']} from {public_uri(configured_tracking_uri())} "
               f"on http://{host}:{port}  ({' '.join(cmd[1:])})", err=True)
    proc = subprocess.Popen(cmd, cwd=root, env=env)
    # Forward SIGTERM (e.g. from `primer down`) so BentoML shuts its workers down cleanly.
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        code = proc.wait()
    sys.exit(code if code >= 0 else 128 - code)
