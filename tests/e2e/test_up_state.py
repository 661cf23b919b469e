"""`primer up` / `primer down` and what they recorded in `.primer/state.json`.

The state file is written by hand here and points at real processes: an unrelated
`sleep` whose PID the state claims (a reused PID, or a state file from before
start times were recorded), and real HTTP servers recorded as if an earlier
`up` had started them. `primer` itself runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.test_local_loop import _primer
from tests.support import console_script, free_port, port_in_use, stop_process, wait_http

Procs = list[subprocess.Popen]


@pytest.fixture()
def procs() -> Iterator[Procs]:
    """Processes a test starts, stopped (with their group) at the end whatever happens."""
    started: Procs = []
    yield started
    for proc in started:
        stop_process(proc, timeout=5)


def _sleep(procs: Procs) -> subprocess.Popen:
    """An unrelated long-running program in its own session, like `setsid sleep 1000`."""
    proc = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    procs.append(proc)
    return proc


def _http_server(procs: Procs, root: Path) -> tuple[subprocess.Popen, int]:
    """A real HTTP server that answers 200 on /health (a file of that name), in its own session."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "health").write_text("OK")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs.append(proc)
    # Reaped as soon as it exits, as init reaps the servers of an `up` that has ended:
    # an unreaped zombie child of this test would look alive to `primer down`.
    threading.Thread(target=proc.wait, daemon=True).start()
    wait_http(f"http://127.0.0.1:{port}/health", 30, proc)
    return proc, port


def _entry(pid: int, port: int, *, create_time: float | None | str = "real") -> dict[str, object]:
    """A state entry; ``create_time="real"`` records the process's true start time (as `up` does)."""
    entry: dict[str, object] = {"pid": pid, "port": port, "log": "/dev/null"}
    if create_time == "real":
        entry["create_time"] = psutil.Process(pid).create_time()
    elif create_time is not None:
        entry["create_time"] = create_time
    return entry


def _write_state(repo: Path, **processes: dict[str, object]) -> Path:
    path = repo / ".primer" / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"processes": processes}, indent=2))
    return path


def _running(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def test_down_stops_its_server_but_never_signals_a_pid_that_is_not_ours(
        loop_repo: tuple[Path, dict[str, str]], procs: Procs) -> None:
    repo, env = loop_repo
    server, server_port = _http_server(procs, repo.parent / "www")
    unrelated = _sleep(procs)
    # mlflow: the PID now belongs to an unrelated program (its start time differs);
    # serving: our server, recorded with its start time as `up` records it.
    state = _write_state(
        repo,
        mlflow=_entry(unrelated.pid, free_port(), create_time=psutil.Process(unrelated.pid).create_time() - 3600),
        serving=_entry(server.pid, server_port),
    )

    done = _primer(repo, env, "down", timeout=60)

    assert done.returncode == 0, done.stdout + done.stderr
    assert _running(unrelated), "primer down signalled a process it did not start"
    assert "skipped stale mlflow entry" in done.stdout and str(unrelated.pid) in done.stdout, done.stdout
    server.wait(timeout=10)  # stopped
    assert f"stopped serving (pid {server.pid}" in done.stdout, done.stdout
    assert json.loads(state.read_text())["processes"] == {}  # both handled: forgotten


def test_down_skips_an_entry_without_a_start_time(loop_repo: tuple[Path, dict[str, str]], procs: Procs) -> None:
    """A state file from before start times were recorded: its PIDs cannot be trusted."""
    repo, env = loop_repo
    unrelated = _sleep(procs)
    state = _write_state(repo, serving=_entry(unrelated.pid, free_port(), create_time=None))

    done = _primer(repo, env, "down", timeout=60)

    assert done.returncode == 0, done.stdout + done.stderr
    assert _running(unrelated), "primer down signalled a PID from a state file without start times"
    assert "skipped stale serving entry" in done.stdout, done.stdout
    assert json.loads(state.read_text())["processes"] == {}


def test_up_refuses_while_an_earlier_up_runs_on_other_ports(
        loop_repo: tuple[Path, dict[str, str]], procs: Procs) -> None:
    repo, env = loop_repo
    mlflow, old_mlflow_port = _http_server(procs, repo.parent / "www-mlflow")
    serving, old_port = _http_server(procs, repo.parent / "www-serving")
    state = _write_state(repo, mlflow=_entry(mlflow.pid, old_mlflow_port), serving=_entry(serving.pid, old_port))
    before = state.read_bytes()
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
    assert state.read_bytes() == before  # state untouched
    assert not (repo / ".primer" / "mlartifacts").exists()  # refused before step 1 did anything
    assert not port_in_use(new_mlflow_port) and not port_in_use(new_port)
    assert _running(mlflow) and _running(serving)


def test_up_says_so_when_the_running_server_does_not_answer(
        loop_repo: tuple[Path, dict[str, str]], procs: Procs) -> None:
    """Ours (start time matches) and on the asked port, but nothing answers there: say so, don't hang."""
    repo, env = loop_repo
    silent = _sleep(procs)
    mlflow_port = free_port()
    _write_state(repo, mlflow=_entry(silent.pid, mlflow_port))

    # The timeout is the "does not hang" check (a stuck `up` raises TimeoutExpired).
    done = _primer(repo, env, "up", "--offline", "--mlflow-port", str(mlflow_port), "--port", str(free_port()),
                   timeout=60)

    assert done.returncode != 0, done.stdout + done.stderr
    assert "already running" not in done.stdout, done.stdout
    assert f"mlflow is running (pid {silent.pid}, port {mlflow_port}) but does not answer" in done.stderr, done.stderr
    assert "primer down" in done.stderr
    assert _running(silent)


def test_up_starts_a_fresh_server_when_the_recorded_pid_is_not_ours(
        loop_repo: tuple[Path, dict[str, str]], procs: Procs) -> None:
    repo, env = loop_repo
    unrelated = _sleep(procs)
    mlflow_port = free_port()
    state = _write_state(repo, mlflow=_entry(unrelated.pid, mlflow_port, create_time=None))
    out = repo.parent / "up.out"

    with open(out, "w") as fh:
        up = subprocess.Popen([console_script("primer"), "up", "--offline", "--mlflow-port", str(mlflow_port),
                               "--port", str(free_port())], cwd=repo, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            text = out.read_text()
            assert "already running" not in text, text  # took the unrelated PID for its MLflow
            assert up.poll() is None, f"primer up ended ({up.returncode}) before MLflow was up:\n{text}"
            assert time.monotonic() < deadline, f"no MLflow on port {mlflow_port} after 120s:\n{text}"
            health = f"http://127.0.0.1:{mlflow_port}/health"
            if port_in_use(mlflow_port) and httpx.get(health, timeout=5).status_code == 200:
                break
            time.sleep(0.2)
        recorded = json.loads(state.read_text())["processes"]["mlflow"]
        assert recorded["pid"] != unrelated.pid
        assert recorded["create_time"] == pytest.approx(psutil.Process(recorded["pid"]).create_time(), abs=1)
        assert "stale state entry" in text, text
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
    assert _running(unrelated)
