"""What the tests (and tests/perf) share, written once:

* a clean environment: :func:`scrub_environ`, :func:`scrubbed_env`;
* free ports and real servers: :func:`free_port`, :func:`running_mlflow`,
  :func:`start_service` (``bentoml serve`` or ``primer serve``);
* the pin file as git and kubelet write it: :func:`write_pin_text`;
* registered versions: :func:`register_tiny_version` (a tiny real model, quick) and
  :func:`train_version` (the real pipeline, ``primer train --no-promote``).

Test-only code lives here, not in the product: ``primer up`` never needs a random
port or an MLflow server it does not supervise itself.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from contract.names import MODEL_NAME
from primer.processes import (  # noqa: F401 - re-exported for the tests
    ServerError,
    console_script,
    mlflow_server_command,
    mlflow_server_env,
    port_in_use,
    stop_process,
    wait_http,
)

if TYPE_CHECKING:
    import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_CHOSEN_PORT = 20000
_handed_out: set[int] = set()


def _ephemeral_range_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range, never the same one twice per process.

    Why not ``bind(0)``: that hands out an ephemeral port and frees it again, and BentoML's
    process manager takes its own control ports with ``bind(0)`` while starting, so it can be
    given the very port we chose before its HTTP socket is bound (seen in CI as
    ``ZMQError: Address already in use``). Ports below the ephemeral range are never
    handed out by ``bind(0)``.
    """
    top = _ephemeral_range_start()
    if top - _LOWEST_CHOSEN_PORT >= 1000:
        for _ in range(500):
            port = random.randrange(_LOWEST_CHOSEN_PORT, top)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as s:  # an unusual port range: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    _handed_out.add(port)
    return port


def start_mlflow_server(
    backend_uri: str, artifacts_dir: Path, port: int, log_file: Path, timeout: float = 90
) -> subprocess.Popen:
    """Start ``mlflow server`` and wait until its health endpoint answers."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            mlflow_server_command(backend_uri, artifacts_dir, port),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=mlflow_server_env(),
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout, proc, log_file)
    except ServerError:
        stop_process(proc)
        raise
    return proc




def start_mlflow_in(root: Path, port: int, backend_uri: str | None = None) -> subprocess.Popen:
    """``mlflow server`` on ``port`` with its data under ``root`` (SQLite unless ``backend_uri``):
    started again with the same arguments, it serves the same runs (a restart after a kill)."""
    return start_mlflow_server(backend_uri or f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", port,
                               root / "mlflow.log")


@contextmanager
def running_mlflow(root: Path, backend_uri: str | None = None, stop_timeout: float = 15) -> Iterator[str]:
    """A real ``mlflow server`` on a free port with its data under ``root`` (SQLite unless
    ``backend_uri`` says otherwise); yields its URI and stops it on exit."""
    port = free_port()
    proc = start_mlflow_in(root, port, backend_uri)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, timeout=stop_timeout)


# -- the environment ------------------------------------------------------------------------

def as_in_a_terminal() -> None:
    """``preexec_fn`` for a child that a test interrupts with Ctrl-C (SIGINT): the default
    disposition, as in a terminal. A test run started in the background (``.ci/run &``)
    inherits SIGINT *ignored*, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def is_primer_setting(name: str) -> bool:
    """A variable that configures this project: PRIMER_* or MLflow's MLFLOW_TRACKING_URI."""
    return name.startswith("PRIMER_") or name == "MLFLOW_TRACKING_URI"


def scrub_environ(monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Remove every project setting from ``os.environ`` (through ``monkeypatch`` when given,
    so the test's end puts them back)."""
    for name in [n for n in os.environ if is_primer_setting(n)]:
        if monkeypatch is None:
            del os.environ[name]
        else:
            monkeypatch.delenv(name)


def scrubbed_env(base: Mapping[str, str] | None = None, *, keep: Iterable[str] = (),
                 **overrides: str) -> dict[str, str]:
    """An environment for a child process: ``base`` (default ``os.environ``) without the project's
    settings except the names in ``keep``, then ``overrides``. Inside the test session
    ``keep=("PRIMER_REPO_DIR",)`` passes on the guard that points the code at an empty folder."""
    base = os.environ if base is None else base
    kept = set(keep)
    env = {k: v for k, v in base.items() if k in kept or not is_primer_setting(k)}
    env.update(overrides)
    return env


# -- the pin --------------------------------------------------------------------------------

def pin_text(version: int | None) -> str:
    """The pin file's two lines for ``version`` (``None``: nothing pinned)."""
    return f"model: {MODEL_NAME}\nversion: {'null' if version is None else version}\n"


def write_pin_text(path: Path, version: int | None | str) -> Path:
    """Write the pin as git and kubelet do: a new file renamed over the old one (atomic).
    A ``str`` is written as it is (a broken pin, on purpose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(version if isinstance(version, str) else pin_text(version))
    os.replace(tmp, path)
    return path


# -- registered versions --------------------------------------------------------------------

def register_tiny_version(tracking_uri: str, experiment_id: str, *, run_name: str = "candidate",
                          tags: dict[str, str] | None = None, skops: bool = False) -> tuple[int, str]:
    """Log a tiny real sklearn model (fitted in milliseconds) in its own run and register it as a
    new version of spy-direction; returns (version, run_id). MLflow's fluent API, pointed at
    ``tracking_uri`` for the duration only (as ml.tracking does)."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from sklearn.linear_model import LogisticRegression

    from contract.settings import env_restored
    from ml.features import FEATURE_COLUMNS

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(40, len(FEATURE_COLUMNS))), columns=list(FEATURE_COLUMNS))
    y = (X.iloc[:, 0] > 0).astype(int)
    with env_restored("MLFLOW_TRACKING_URI"), _use_tracking_uri(tracking_uri):
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            fmt = {"serialization_format": "skops", "skops_trusted_types": []} if skops else {
                "serialization_format": "pickle"}
            mlflow.sklearn.log_model(LogisticRegression().fit(X, y), name="model", pip_requirements=["scikit-learn"],
                                     **fmt)
        mv = mlflow.register_model(f"runs:/{run.info.run_id}/model", MODEL_NAME, tags=tags)
    return int(mv.version), run.info.run_id


def latest_version(tracking_uri: str) -> int:
    from mlflow import MlflowClient

    versions = MlflowClient(tracking_uri=tracking_uri).search_model_versions(f"name='{MODEL_NAME}'")
    return max(int(v.version) for v in versions)


def train_version(tracking_uri: str, pin_file: Path, source: str, *, base_env: Mapping[str, str] | None = None,
                  timeout: float = 300) -> int:
    """Register one version with the real pipeline (``primer train --no-promote`` in a subprocess,
    from the repository root); return its number."""
    env = scrubbed_env(base_env, keep=("PRIMER_REPO_DIR",), MLFLOW_TRACKING_URI=tracking_uri,
                       PRIMER_PIN_FILE=str(pin_file))
    res = subprocess.run([console_script("primer"), "train", "--source", source, "--no-promote"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"primer train failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return latest_version(tracking_uri)


# -- the service ----------------------------------------------------------------------------

@dataclass
class Service:
    """A running ``bentoml serve`` (or ``primer serve``) and the pin file it follows; a context
    manager that stops it."""

    url: str
    pin: Path
    log: Path
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        stop_process(self.proc)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=10, **kw)

    def model(self) -> dict[str, Any]:
        r = self.get("/model")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_model(self, predicate: Callable[[dict[str, Any]], Any], timeout: float = 60,
                   what: str = "condition") -> dict[str, Any]:
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


def start_service(tmp: Path, tracking_uri: str, pin_version: int | None, *, primer_serve: bool = False,
                  wait_for: str = "/livez", base_env: Mapping[str, str] | None = None,
                  **env_overrides: str | None) -> Service:
    """Start the service on a free port and wait until ``wait_for`` answers 200.

    ``bentoml serve bentos.service:PrimerService`` from the repository root, or the CLI's
    ``primer serve`` with ``primer_serve=True``. It reads the pin file ``tmp/model-version.yaml``
    (written here with ``pin_version``), synthetic market data and MLflow at ``tracking_uri``;
    ``env_overrides`` change any of that.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    pin = write_pin_text(tmp / "model-version.yaml", pin_version)
    port = free_port()
    env = scrubbed_env(base_env, keep=("PRIMER_REPO_DIR",), **{
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PRIMER_PIN_FILE": str(pin),
        "PRIMER_DATA_SOURCE": "synthetic",
        "PRIMER_PIN_POLL_SECONDS": "0.5",
        "BENTOML_HOME": str(tmp / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "true",
        **env_overrides,
    })
    env = {k: v for k, v in env.items() if v is not None}  # an override of None unsets the variable
    if primer_serve:
        cmd = [console_script("primer"), "serve", "--port", str(port)]
    else:
        cmd = [console_script("bentoml"), "serve", "bentos.service:PrimerService",
               "--host", "127.0.0.1", "--port", str(port)]
    log = tmp / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + wait_for, 60, proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return Service(url=url, pin=pin, log=log, proc=proc, env=env)
