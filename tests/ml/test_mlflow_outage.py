"""MLflow killed in the middle of `primer train`: the run ends soon with one clear line, and no
MLflow run stays RUNNING for ever (marked FAILED by the next run once the server is back).

Real parts only: `mlflow server` on SQLite, killed with SIGKILL while the candidates are being
fitted and started again on the same database; `primer train` as a subprocess, as a CronJob runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from contract.names import EXPERIMENT_NAME
from tests.support import console_script, free_port, scrubbed_env, start_mlflow_server, stop_process, write_pin_text

pytestmark = pytest.mark.slow
KILLED_RUN_ENDS_WITHIN = 120.0  # seconds after the kill; it used to take 749 s


def _train(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([console_script("primer"), "train", "--source", "synthetic:3", "--no-promote", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_mlflow_killed_mid_run_ends_the_run_and_leaves_nothing_running(tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    db, artifacts, log = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", tmp_path / "mlflow.log"
    pin = write_pin_text(tmp_path / "model-version.yaml", None)
    env = scrubbed_env(MLFLOW_TRACKING_URI=uri, PRIMER_PIN_FILE=str(pin), PRIMER_REPO_DIR=str(tmp_path))
    server = start_mlflow_server(db, artifacts, port, log)
    try:
        train = _train(env)
        assert train.stdout is not None
        for line in train.stdout:  # the parent run exists once "[baseline]" lines print; then fitting starts
            if line.startswith("[train]"):
                break
        else:
            pytest.fail(f"primer train ended before training: {train.communicate()}")
        os.killpg(server.pid, signal.SIGKILL)  # a crash, not a shutdown (the server has its own session)
        server.wait(timeout=30)
        killed = time.monotonic()
        out, err = train.communicate(timeout=KILLED_RUN_ENDS_WITHIN + 30)
        took = time.monotonic() - killed
    finally:
        stop_process(server)

    assert train.returncode == 1, out + err
    assert took < KILLED_RUN_ENDS_WITHIN, f"{took:.0f}s after MLflow died"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"MLflow at {uri} failed during training" in errors[0] and "nothing was registered" in errors[0], errors

    # The server comes back (same database); the next run marks what the cut-off one left RUNNING.
    server = start_mlflow_server(db, artifacts, port, log)
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
        left = client.search_runs([experiment], "attributes.status = 'RUNNING'")
        assert left, "the killed run should have left its parent run RUNNING (MLflow was down)"
        again = _train(env, "--train-years", "1")
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, out + err
        assert f"marked {len(left)} run(s) FAILED" in out, out
        assert client.search_runs([experiment], "attributes.status = 'RUNNING'") == []
        for run in left:
            assert client.get_run(run.info.run_id).info.status == "FAILED"
    finally:
        stop_process(server)


def test_only_runs_of_a_gone_primer_train_count_as_abandoned(tmp_path: Path) -> None:
    """A user's own RUNNING run, and a primer run whose process still lives, are never marked FAILED."""
    import socket

    from ml.tracking import OWNER_HOST_TAG, OWNER_PID_TAG, Tracker
    from tests.support import running_mlflow

    gone = subprocess.Popen(["true"])
    gone.wait()
    with running_mlflow(tmp_path) as uri:
        tracker = Tracker(uri)
        experiment = tracker.experiment_id("abandoned-runs")
        here = socket.gethostname()
        client = MlflowClient(tracking_uri=uri)
        users = client.create_run(experiment, run_name="a user's notebook").info.run_id
        alive = client.create_run(experiment, tags={OWNER_HOST_TAG: here, OWNER_PID_TAG: str(os.getpid())}).info.run_id
        dead = client.create_run(experiment, tags={OWNER_HOST_TAG: here, OWNER_PID_TAG: str(gone.pid)}).info.run_id
        elsewhere = client.create_run(experiment, tags={OWNER_HOST_TAG: "another-pod", OWNER_PID_TAG: "1"}).info.run_id

        assert tracker.fail_abandoned(experiment) == [dead]
        status = {r: client.get_run(r).info.status for r in (users, alive, dead, elsewhere)}
        assert status == {users: "RUNNING", alive: "RUNNING", dead: "FAILED", elsewhere: "RUNNING"}
