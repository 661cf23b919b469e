"""What the tests share: free ports, real servers started and stopped, a clean environment.

Test-only code lives here, not in the product: ``primer up`` never needs a random
port or an MLflow server it does not supervise itself.
"""

from __future__ import annotations

import random
import socket
import subprocess
from pathlib import Path

from primer.processes import (  # noqa: F401 - re-exported for the tests
    ServerError, console_script, mlflow_server_command, mlflow_server_env, port_in_use, stop_process, wait_http,
)

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


