"""Start, watch and stop the local servers the loop needs (MLflow, BentoML).

Shared by ``primer up`` and the test-suite (``tests/support.py``), so both run the same commands.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from contract.errors import PrimerError
from contract.settings import child_env


class ServerError(PrimerError):
    """A server did not start or answer in time."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class PortInUse(ServerError):
    """The port a server should listen on is taken; the message names it and the option to change it."""


def require_free_port(port: int, option: str, what: str | None = None, host: str = "127.0.0.1") -> None:
    """Raise :class:`PortInUse` (port, what it was for, how to choose another) when ``port`` is taken."""
    if port_in_use(port, "127.0.0.1" if host in ("0.0.0.0", "::") else host):
        raise PortInUse(
            f"port {port}{f' ({what})' if what else ''} is already in use by another program; "
            f"stop it or choose another port with {option} (e.g. {option} {port + 1})"
        )


def console_script(name: str) -> str:
    """A console script of this environment (the venv's bin folder first)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise ServerError(f"process for {url} exited with {proc.returncode}\n{tail}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise ServerError(f"{url} not ready after {timeout:.0f}s ({last})\n{tail}")


def mlflow_server_command(backend_uri: str, artifacts_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    return [
        console_script("mlflow"), "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts_dir),
        "--host", host, "--port", str(port),
        "--workers", "1",
    ]


def mlflow_server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``mlflow server``: without its job runner.

    MLflow 3 starts a job runner with seven Huey consumer processes for GenAI
    jobs this project never uses; on a 2-core laptop they cost memory and start-up time.
    """
    env = dict(child_env() if base is None else base)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def stop_process(proc: subprocess.Popen | int, timeout: float = 15) -> None:
    """Stop a server and every process it forked: SIGTERM, then SIGKILL what is left after ``timeout``."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied as exc:
            raise ServerError(f"not allowed to stop pid {p.pid} (started by another user?): {exc}") from exc
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    if isinstance(proc, subprocess.Popen):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)  # reap our own child
