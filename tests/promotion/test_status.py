"""`primer status` against a running service's GET /model, and `pin check` on the repository's pin."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import click
import pytest
from click.testing import CliRunner

from promotion.cli import COMMANDS
from promotion.names import PIN_PATH
from tests.promotion.conftest import Registry, Repos

CLI = click.Group("primer", commands=list(COMMANDS))


@pytest.fixture
def service() -> Iterator[dict[str, object]]:
    """A stand-in answering GET /model like the BentoML service does (only the fields status reads)."""
    state: dict[str, object] = {"model_name": "spy-direction", "model_version": None, "ready": False}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            data = json.dumps(state).encode() if self.path == "/model" else b"{}"
            self.send_response(200 if self.path == "/model" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_status_reports_service_drift(promo_env: Repos, promo_mlflow: Registry, service: dict[str, object],
                                      new_version: Callable[[], tuple[int, str]]) -> None:
    v, _ = new_version()
    runner = CliRunner()
    assert runner.invoke(CLI, ["promote", str(v)]).exit_code == 0
    r = runner.invoke(CLI, ["pin", "check"])  # default FILE: the repository's pin
    assert r.exit_code == 0 and f"v{v} (exists in the registry)" in r.output
    assert runner.invoke(CLI, ["registry", "sync"]).exit_code == 0

    url = str(service["url"])
    service["model_version"] = str(v - 1) if v > 1 else None
    r = runner.invoke(CLI, ["status", "--service-url", url])
    assert r.exit_code == 0
    assert f"DRIFT: service at {url} serves" in r.output and f"git pins v{v}" in r.output
    assert runner.invoke(CLI, ["status", "--service-url", url, "--strict"]).exit_code == 1

    service["model_version"] = str(v)
    r = runner.invoke(CLI, ["status", "--strict"], env={"PRIMER_SERVICE_URL": url})
    assert r.exit_code == 0, r.output
    assert f"service:              v{v}" in r.output and "in sync" in r.output and "DRIFT" not in r.output


def test_status_names_the_pinning_commit_with_a_relative_pin_file(
        promo_env: Repos, promo_mlflow: Registry, new_version: Callable[[], tuple[int, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # PRIMER_PIN_FILE relative to the cwd used to be looked up again from the pin's own folder.
    v, _ = new_version()
    runner = CliRunner()
    assert runner.invoke(CLI, ["promote", str(v)]).exit_code == 0
    monkeypatch.chdir(promo_env.work)
    monkeypatch.setenv("PRIMER_PIN_FILE", PIN_PATH)
    r = runner.invoke(CLI, ["status"])
    assert r.exit_code == 0, r.output
    assert f"pin (git):            v{v}   [" in r.output and f" Promote spy-direction to v{v}]" in r.output


def test_status_never_says_in_sync_when_mlflow_cannot_be_asked(promo_env: Repos, service: dict[str, object],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.servers import free_port

    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", unreachable)
    runner = CliRunner()
    r = runner.invoke(CLI, ["status", "--service-url", str(service["url"])])  # service: nothing pinned, none served
    assert r.exit_code == 0, r.output
    assert "in sync" not in r.output and f"NOT CHECKED: MLflow at {unreachable}" in r.output
    r = runner.invoke(CLI, ["status", "--strict", "--service-url", str(service["url"])])
    assert r.exit_code == 3, r.output
