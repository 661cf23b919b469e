"""`primer up` / `primer down` find their servers by looking, and touch nothing else.

Which servers belong to a state folder is read from the running processes (MLflow's
command line names its database there; the service runs with PRIMER_STATE_DIR), so
these tests start small stand-ins with exactly those marks: a tiny HTTP server run as
a program named `mlflow` (or `bentoml`) with the arguments and environment a real one
has. Unrelated programs, and the servers of another checkout's `primer up`, must never
be signalled. `primer` itself runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_local_loop import _primer
from tests.support import as_in_a_terminal, console_script, free_port, port_in_use, stop_process

pytestmark = pytest.mark.slow
Procs = list[subprocess.Popen]

# A stand-in server: answers 200 on every path when ANSWER=1, else accepts and never answers.
_STAND_IN = """\
import http.server, os, socketserver, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
if os.environ.get("ANSWER") == "1":
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
else:
    s = socketserver.socket.socket(); s.bind(("127.0.0.1", port)); s.listen(); time.sleep(1000)
"""


@pytest.fixture()
def procs() -> Iterator[Procs]:
    """Processes a test starts, stopped at the end whatever happens."""
    started: Procs = []
    yield started
    for proc in started:
        stop_process(proc, timeout=5)


def _stand_in(procs: Procs, tmp: Path, program: str, args: list[str], *, answer: bool = True,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """A process whose command line reads ``<python> .../<program> <args> --port N``, listening on N."""
    script = tmp / "bin" / program
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(_STAND_IN)
    port = free_port()
    full_env = {**os.environ, **(env or {}), "ANSWER": "1" if answer else "0"}
    proc = subprocess.Popen([sys.executable, str(script), *args, "--port", str(port)], env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs.append(proc)
    # Reaped as soon as it exits, as init reaps the servers of an `up` that has ended.
    threading.Thread(target=proc.wait, daemon=True).start()
    deadline = time.monotonic() + 30
    while not port_in_use(port):
        assert proc.poll() is None and time.monotonic() < deadline, "the stand-in did not listen"
        time.sleep(0.05)
    return proc, port


def _our_mlflow(procs: Procs, tmp: Path, state: Path, **kw: bool) -> tuple[subprocess.Popen, int]:
    return _stand_in(procs, tmp / "m", "mlflow", ["server", "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}"],
                     **kw)


def _our_service(procs: Procs, tmp: Path, state: Path) -> tuple[subprocess.Popen, int]:
    return _stand_in(procs, tmp / "s", "bentoml", ["serve", "bentos.service:PrimerService"],
                     env={"PRIMER_STATE_DIR": str(state)})


def _sleep(procs: Procs) -> subprocess.Popen:
    """An unrelated long-running program in its own session, like `setsid sleep 1000`."""
    proc = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    procs.append(proc)
    return proc


def _running(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def test_down_stops_our_servers_and_nothing_else(loop_repo: tuple[Path, dict[str, str]], procs: Procs,
                                                 tmp_path: Path) -> None:
    repo, env = loop_repo
    state = repo / ".primer"
    mlflow, mlflow_port = _our_mlflow(procs, tmp_path / "ours", state)
    service, api_port = _our_service(procs, tmp_path / "ours", state)
    unrelated = _sleep(procs)
    # Another checkout's `primer up`: the same programs, another state folder.
    other_mlflow, _ = _our_mlflow(procs, tmp_path / "other", tmp_path / "other-checkout" / ".primer")
    other_service, _ = _our_service(procs, tmp_path / "other", tmp_path / "other-checkout" / ".primer")

    done = _primer(repo, env, "down", timeout=60)

    assert done.returncode == 0, done.stdout + done.stderr
    mlflow.wait(timeout=10)
    service.wait(timeout=10)
    assert f"stopped mlflow (pid {mlflow.pid}, port {mlflow_port})" in done.stdout, done.stdout
    assert f"stopped serving (pid {service.pid}, port {api_port})" in done.stdout, done.stdout
    assert _running(unrelated) and _running(other_mlflow) and _running(other_service), \
        "primer down signalled a process that is not one of its servers"
    again = _primer(repo, env, "down", timeout=60)
    assert again.returncode == 0 and "nothing to stop" in again.stdout, again.stdout


def test_up_refuses_while_an_earlier_up_runs_on_other_ports(
        loop_repo: tuple[Path, dict[str, str]], procs: Procs, tmp_path: Path) -> None:
    repo, env = loop_repo
    state = repo / ".primer"
    mlflow, old_mlflow_port = _our_mlflow(procs, tmp_path, state)
    serving, old_port = _our_service(procs, tmp_path, state)
    new_mlflow_port, new_port = free_port(), free_port()

    try:
        # Without the check this starts a second MLflow on the same database and trains:
        # far longer than the timeout, which then fails the test.
        done = _primer(repo, env, "up", "--offline", "--mlflow-port", str(new_mlflow_port), "--port", str(new_port),
                       timeout=60)
    finally:
        if port_in_use(new_mlflow_port) or port_in_use(new_port):
            _primer(repo, env, "down", timeout=60)  # only after a failure: stop what that `up` started

    assert done.returncode != 0, done.stdout + done.stderr
    error = done.stderr.strip()
    assert len(error.splitlines()) == 1, error
    for expected in (f"mlflow on port {old_mlflow_port}", f"serving on port {old_port}", "primer down",
                     f"--mlflow-port {old_mlflow_port} --port {old_port}"):
        assert expected in error, error
    assert not (state / "mlartifacts").exists()  # refused before step 1 did anything
    assert not port_in_use(new_mlflow_port) and not port_in_use(new_port)
    assert _running(mlflow) and _running(serving)


def test_up_says_so_when_its_running_server_does_not_answer(
        loop_repo: tuple[Path, dict[str, str]], procs: Procs, tmp_path: Path) -> None:
    """Ours (it names this state folder's database) and on the asked port, but silent: say so, don't hang."""
    repo, env = loop_repo
    silent, mlflow_port = _our_mlflow(procs, tmp_path, repo / ".primer", answer=False)

    # The timeout is the "does not hang" check (a stuck `up` raises TimeoutExpired).
    done = _primer(repo, env, "up", "--offline", "--mlflow-port", str(mlflow_port), "--port", str(free_port()),
                   timeout=60)

    assert done.returncode != 0, done.stdout + done.stderr
    assert "already running" not in done.stdout, done.stdout
    assert f"mlflow is running (pid {silent.pid}) but does not answer on port {mlflow_port}" in done.stderr, \
        done.stderr
    assert "primer down" in done.stderr
    assert _running(silent)


def test_up_beside_another_checkouts_up_starts_its_own_servers(
        loop_repo: tuple[Path, dict[str, str]], procs: Procs, tmp_path: Path) -> None:
    """Two checkouts on one host: the other's servers are neither resumed nor refused nor signalled."""
    repo, env = loop_repo
    other = tmp_path / "other-checkout" / ".primer"
    other_mlflow, _ = _our_mlflow(procs, tmp_path, other)
    other_service, _ = _our_service(procs, tmp_path, other)
    mlflow_port = free_port()
    out = repo.parent / "up.out"

    with open(out, "w") as fh:
        up = subprocess.Popen([console_script("primer"), "up", "--offline", "--mlflow-port", str(mlflow_port),
                               "--port", str(free_port())], cwd=repo, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True, preexec_fn=as_in_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while True:
            text = out.read_text()
            assert "already running" not in text and "earlier `primer up`" not in text, text
            assert up.poll() is None, f"primer up ended ({up.returncode}) before MLflow was up:\n{text}"
            assert time.monotonic() < deadline, f"no MLflow on port {mlflow_port} after 120s:\n{text}"
            health = f"http://127.0.0.1:{mlflow_port}/health"
            if port_in_use(mlflow_port) and httpx.get(health, timeout=5).status_code == 200:
                break
            time.sleep(0.2)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)  # Ctrl-C: `up` stops the MLflow it started
            try:
                up.wait(timeout=60)
            finally:
                if up.poll() is None:
                    up.kill()
                    _primer(repo, env, "down", timeout=60)
    assert not port_in_use(mlflow_port)
    assert _running(other_mlflow) and _running(other_service)
