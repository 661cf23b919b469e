"""Fixtures for the serving tests: real MLflow, models from the real pipeline, real ``bentoml serve``.

One service is started per module and driven through its pin file; tests that need
a different configuration start their own short-lived service with :func:`start_service`.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import console_script, free_port, stop_process, wait_http
from contract.names import MODEL_NAME

# Derived from this file, not hard-coded: `bentoml serve` runs from the repo root.
REPO_ROOT = Path(__file__).resolve().parents[2]


def write_pin(path: Path, version: int | None | str) -> None:
    """Write the pin the way git/kubelet do: a new file renamed over the old one (atomic)."""
    text = version if isinstance(version, str) else f"model: {MODEL_NAME}\nversion: {'null' if version is None else version}\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Service:
    url: str
    pin: Path
    log: Path
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=10, **kw)

    def model(self) -> dict[str, Any]:
        r = self.get("/model")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_model(self, predicate: Any, timeout: float = 60, what: str = "condition") -> dict[str, Any]:
        """Poll /model until ``predicate(info)`` holds; fail with the last /model and the log tail."""
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"service exited with {self.proc.returncode}\n{self.log_tail()}"
            info = self.model()
            if predicate(info):
                return info
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last /model: {info}\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def start_service(tmp: Path, tracking_uri: str, pin_version: int | None, **env_overrides: str) -> Service:
    """Start ``bentoml serve bentos.service:PrimerService`` on a free port; wait for /livez."""
    tmp.mkdir(parents=True, exist_ok=True)
    pin = tmp / "model-version.yaml"
    write_pin(pin, pin_version)
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PRIMER_PIN_FILE": str(pin),
        "PRIMER_DATA_SOURCE": "synthetic",
        "PRIMER_PIN_POLL_SECONDS": "0.5",
        "BENTOML_HOME": str(tmp / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "true",
        **env_overrides,
    }
    log = tmp / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [console_script("bentoml"), "serve", "bentos.service:PrimerService", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/livez", 60, proc, log)
    except Exception:
        stop_process(proc)
        raise
    return Service(url=url, pin=pin, log=log, proc=proc, env=env)


def _latest_version(tracking_uri: str) -> int:
    from mlflow import MlflowClient

    versions = MlflowClient(tracking_uri=tracking_uri).search_model_versions(f"name='{MODEL_NAME}'")
    return max(int(v.version) for v in versions)


def train(tracking_uri: str, source: str, pin_file: Path) -> int:
    """Register one version with the real pipeline (`primer train --no-promote`); return its number."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PRIMER_PIN_FILE": str(pin_file)}
    res = subprocess.run(
        [console_script("primer"), "train", "--source", source, "--no-promote"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, f"primer train failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return _latest_version(tracking_uri)


@dataclass
class Registered:
    uri: str
    first: int
    second: int


@pytest.fixture(scope="module")
def registered(mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """Two versions of spy-direction trained by the pipeline on different synthetic markets."""
    pin = tmp_path_factory.mktemp("train") / "model-version.yaml"
    write_pin(pin, None)
    first = train(mlflow_server.uri, "synthetic:11", pin)
    second = train(mlflow_server.uri, "synthetic:23", pin)
    assert second > first
    return Registered(uri=mlflow_server.uri, first=first, second=second)


@pytest.fixture(scope="module")
def service(registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The module's one service; it starts with nothing pinned (tests pin through the file)."""
    svc = start_service(tmp_path_factory.mktemp("serve"), registered.uri, None)
    try:
        yield svc
    finally:
        stop_process(svc.proc)


@pytest.fixture(scope="module")
def local_model(registered: Registered) -> Any:
    """The first version loaded in the test process, to check the service's numbers independently."""
    import mlflow.sklearn

    mlflow.set_tracking_uri(registered.uri)
    return mlflow.sklearn.load_model(f"models:/{MODEL_NAME}/{registered.first}")
