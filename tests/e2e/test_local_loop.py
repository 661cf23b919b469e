"""The whole loop on one machine, as a user runs it: `primer up --offline` ... `primer down`.

Everything is real: the `primer` console script in subprocesses, an MLflow
server, `bentoml serve`, git in a temporary copy of this repository. Only the
market data is generated (--offline).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
from mlflow import MlflowClient

from contract.names import CHAMPION_ALIAS, MODEL_NAME, PIN_PATH, promotion_branch
from contract.pin import read_pin, write_pin
from tests.support import as_in_a_terminal, console_script, free_port, port_in_use

SEED_KEYS = {"prediction", "confidence", "threshold", "model_source", "model_alias"}



def _primer(repo: Path, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([console_script("primer"), *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _served_version(api: str) -> str | None:
    return httpx.get(f"{api}/model", timeout=5).json().get("model_version")


def _wait_served(api: str, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = _served_version(api)
        if seen == version:
            return
        time.sleep(0.5)
    raise AssertionError(f"service still serves v{seen}, expected v{version}")


def test_primer_up_promote_rollback_down(loop_repo: tuple[Path, dict[str, str]]) -> None:
    repo, env = loop_repo
    mlflow_port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    tracking = f"http://127.0.0.1:{mlflow_port}"
    env["MLFLOW_TRACKING_URI"] = tracking
    up_args = ("up", "--offline", "--mlflow-port", str(mlflow_port), "--port", str(api_port))
    # A replay clock that stands still: every run sees data up to the same day, so the gate
    # decides the same way whatever the date of the CI run (with today's data the seed
    # that clears the gate changes from day to day).
    env.update({"PRIMER_MODE": "replay", "PRIMER_REPLAY_START": "2025-06-02",
                "PRIMER_REPLAY_EPOCH": "2026-01-01T00:00:00Z", "PRIMER_REPLAY_INTERVAL_SECONDS": "1e12"})
    try:
        # 1. up: MLflow, one training run, the first pin committed, the API ready.
        done = _primer(repo, env, *up_args)
        assert done.returncode == 0, done.stdout + done.stderr
        # Monitoring ran (nothing to score yet) and the summary says where the live metrics are.
        assert "monitoring: the served answers scored" in done.stdout and "holds no answer yet" not in done.stderr
        assert f"Live metrics   {api}/metrics" in done.stdout, done.stdout
        # The `primer monitor` line it prints works as pasted: the log and the --offline source, set.
        [printed] = [line.split() for line in done.stdout.splitlines() if line.strip().endswith("primer monitor")]
        assigned = dict(word.split("=", 1) for word in printed[:-2])
        assert assigned["PRIMER_DATA_SOURCE"] == "synthetic" and "PRIMER_PREDICTION_LOG" in assigned, printed
        monitored = _primer(repo, {**env, **assigned}, "monitor")
        assert monitored.returncode == 0, monitored.stdout + monitored.stderr
        assert "1 answer(s) wait for their next close" in monitored.stdout, monitored.stdout
        pinned = read_pin(repo / PIN_PATH).version
        assert pinned == 1
        log = subprocess.run(["git", "log", "--format=%s", "--", PIN_PATH], cwd=repo, capture_output=True,
                             text=True, check=True).stdout
        assert "v1" in log.splitlines()[0], log
        r = httpx.get(f"{api}/predictionForTomorrow", params={"threshold": 0.5}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert SEED_KEYS <= body.keys() and body["model_version"] == "1"
        assert body["prediction"] in {"UP", "DOWN"} and 0.0 <= body["confidence"] <= 1.0
        client = MlflowClient(tracking_uri=tracking)
        assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS).version == "1"
        serving_pid = _serving_pid(api_port)

        # 2. train again on data with a planted signal (synthetic:SEED:SIGNAL): a fitted model beats
        #    v1 (climatology or a model refitted on these folds too) by the paired test on the
        #    same walk-forward rows, so the gate proposes branch promote/spy-direction-v2 (no
        #    forge locally: a branch only).
        done = _primer(repo, env, "train", "--source", "synthetic:7:1.0")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"v2 proposed on branch {promotion_branch(2)}" in done.stdout, done.stdout
        assert _promotion_branches(repo) == [promotion_branch(2)]
        branch, new_version = promotion_branch(2), 2
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'"))
        assert versions == [1, 2]

        # 3. merge = promote: the running service swaps to v2 without a restart.
        subprocess.run(["git", "merge", "--no-edit", "-q", branch], cwd=repo, check=True)
        assert read_pin(repo / PIN_PATH).version == new_version
        _wait_served(api, str(new_version))
        assert _serving_pid(api_port) == serving_pid  # swapped in place, not restarted

        # 4. roll back: a git commit pins v1 again and the service follows.
        done = _primer(repo, env, "rollback")
        assert done.returncode == 0, done.stdout + done.stderr
        assert read_pin(repo / PIN_PATH).version == 1
        _wait_served(api, "1")

        # 5. status: git, MLflow and the service agree.
        done = _primer(repo, env, "registry", "sync")
        assert done.returncode == 0, done.stdout + done.stderr
        done = _primer(repo, env, "status", "--service-url", api)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "drift" not in done.stdout.lower().replace("no drift", ""), done.stdout

        # 6. down, then up again resumes: no new training run, same pin served.
        done = _primer(repo, env, "down")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not port_in_use(api_port) and not port_in_use(mlflow_port)
        done = _primer(repo, env, *up_args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == len(versions)
        assert _served_version(api) == "1"

        # 7. registered but nothing pinned (as after a Ctrl-C between register and pin):
        #    up trains again so the policy can pin, instead of stopping at "nothing is pinned".
        done = _primer(repo, env, "down")
        assert done.returncode == 0, done.stdout + done.stderr
        write_pin(repo / PIN_PATH, None)
        subprocess.run(["git", "commit", "-q", "-m", "unpin", "--", PIN_PATH], cwd=repo, check=True)
        done = _primer(repo, env, *up_args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "registered but none pinned" in done.stdout + done.stderr
        repinned = read_pin(repo / PIN_PATH).version
        assert repinned == len(versions) + 1
        assert _served_version(api) == str(repinned)
    finally:
        _primer(repo, env, "down", timeout=60)
    assert not port_in_use(api_port) and not port_in_use(mlflow_port)


def _serving_pid(api_port: int) -> int:
    """The process listening on the API port (BentoML's server: `primer serve` execs it)."""
    pids = {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == api_port and c.pid}
    assert len(pids) == 1, pids
    return pids.pop()


def _promotion_branches(repo: Path) -> list[str]:
    out = subprocess.run(["git", "branch", "--format=%(refname:short)", "--list", "promote/*"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted(out, key=lambda b: int(b.rsplit("-v", 1)[1]))


@pytest.mark.parametrize("busy_option", ["--mlflow-port", "--port"])
def test_primer_up_names_a_busy_port_before_doing_anything(busy_option: str,
                                                           loop_repo: tuple[Path, dict[str, str]]) -> None:
    repo, env = loop_repo
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--mlflow-port": str(free_port()), "--port": str(free_port()), busy_option: str(port)}
        done = _primer(repo, env, "up", "--offline", *[x for kv in ports.items() for x in kv], timeout=60)
    assert done.returncode != 0
    assert f"port {port}" in done.stderr and busy_option in done.stderr
    # Nothing started, trained or pinned: fix the port and run `up` again.
    assert "[1/5]" not in done.stdout and not (repo / ".primer" / "mlflow.db").exists()
    assert read_pin(repo / PIN_PATH).version is None


def test_ctrl_c_during_up_stops_what_it_started(loop_repo: tuple[Path, dict[str, str]]) -> None:
    repo, env = loop_repo
    mlflow_port = free_port()
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{mlflow_port}"
    # Its own process group, like a shell's foreground job: Ctrl-C signals the whole group.
    proc = subprocess.Popen([console_script("primer"), "up", "--offline", "--mlflow-port", str(mlflow_port),
                             "--port", str(free_port())], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=as_in_a_terminal)
    try:
        deadline = time.monotonic() + 120
        state = repo / ".primer"
        while not port_in_use(mlflow_port):  # MLflow is up: training next
            assert proc.poll() is None and time.monotonic() < deadline, "primer up ended before MLflow was up"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        assert "interrupted" in err
        assert not port_in_use(mlflow_port)  # the MLflow server this run started is gone
        assert (state / "mlflow.db").exists()  # state kept for the next `primer up`
    finally:
        if proc.poll() is None:
            proc.kill()
        _primer(repo, env, "down", timeout=60)  # servers a failed assertion above would leave running
