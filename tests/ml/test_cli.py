"""`primer train` user errors and the hand-off to the promotion step."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from contract.names import MODEL_NAME
from tests.support import free_port

ARGS = ("--source", "synthetic:7", "--anchor", "2024-06-28", "--train-years", "1")


def _versions(uri: str) -> int:
    return len(MlflowClient(tracking_uri=uri).search_model_versions(f"name='{MODEL_NAME}'"))


def test_unreachable_mlflow_is_named(trainer_factory, fast_grid: Path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = trainer_factory(uri)(*ARGS, "--candidates", str(fast_grid), "--no-promote")
    assert result.exit_code == 1
    assert f"MLflow tracking server {uri} is not reachable" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (("--source", "yahoo"), "unknown data source 'yahoo'"),
        (("--source", "csv:/nonexistent/spy.csv"), "CSV data file not found: /nonexistent/spy.csv"),
        (("--source", "synthetic", "--eval-days", "20"), "minimum is 60"),
        (("--source", "synthetic", "--train-years", "nan"),
         "--train-years (PRIMER_TRAIN_YEARS) must be a positive number"),
        (("--source", "synthetic", "--train-years", "0"), "must be a positive number, got 0.0"),
        (("--source", "synthetic", "--candidates", "/nonexistent.yaml"), "cannot read candidate file"),
    ],
)
def test_user_errors_exit_cleanly(args, message, trainer_factory, mlflow_server):
    result = trainer_factory(mlflow_server.uri)(*args, "--no-promote")
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_untrainable_data_is_named_and_registers_nothing(trainer_factory, mlflow_server, fast_grid: Path,
                                                         market, tmp_path: Path):
    # Valid bars that never rise: every label is DOWN, so no classifier can be fitted.
    from tests.ml.conftest import write_csv

    flat = market.tail(800).copy()
    flat[["open", "high", "low", "close"]] = 100.0
    csv = write_csv(flat, tmp_path / "flat.csv")
    before = _versions(mlflow_server.uri)
    result = trainer_factory(mlflow_server.uri)("--source", f"csv:{csv}", "--anchor", "2024-06-28",
                                                "--train-years", "1", "--eval-days", "60",
                                                "--candidates", str(fast_grid), "--no-promote")
    assert result.exit_code == 1, result.output
    assert "cannot train candidate rf_small: training window holds a single class (0)" in result.output
    assert "Traceback" not in result.output
    assert _versions(mlflow_server.uri) == before


@pytest.mark.parametrize("env,message", [
    ({"PRIMER_EVAL_DAYS": "1.5"}, "PRIMER_EVAL_DAYS must be an integer, got '1.5'"),
    ({"PRIMER_TRAIN_YEARS": "ten"}, "PRIMER_TRAIN_YEARS must be a number, got 'ten'"),
])
def test_bad_numbers_in_the_environment_are_named(env, message, trainer_factory, mlflow_server):
    result = trainer_factory(mlflow_server.uri)("--source", "synthetic", "--no-promote", env=env)
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("env,message", [
    ({"PRIMER_FORGE": "gitea"}, "PRIMER_FORGE_REPO must be owner/name, got ''"),
    ({"PRIMER_FORGE": "gitlab"}, "PRIMER_FORGE must be gitea, github or none, got 'gitlab'"),
    ({"PRIMER_POLICY_FILE": "/nonexistent/policy.yaml"}, "/nonexistent/policy.yaml: policy file not found"),
])
def test_unusable_promotion_settings_stop_the_run_before_training(env, message, trainer_factory, mlflow_server,
                                                                  fast_grid: Path):
    before = _versions(mlflow_server.uri)
    result = trainer_factory(mlflow_server.uri)(*ARGS, "--candidates", str(fast_grid), env=env)
    assert result.exit_code == 1, result.output
    assert f"promotion settings: {message}; nothing was trained" in result.output
    assert "[data]" not in result.output and "Traceback" not in result.output
    assert _versions(mlflow_server.uri) == before


def test_bad_replay_settings_are_named(trainer_factory, mlflow_server):
    result = trainer_factory(mlflow_server.uri)(
        "--source", "synthetic", "--no-promote", env={"PRIMER_MODE": "replay", "PRIMER_REPLAY_START": "2020-01-02"}
    )
    assert result.exit_code == 1 and "PRIMER_REPLAY_EPOCH" in result.output


def _rejecting_remote(tmp_path: Path) -> Path:
    """A bare git remote with the pin on main whose pre-receive hook refuses every push."""
    import subprocess

    from contract.names import PIN_PATH
    from contract.pin import write_pin

    work, remote = tmp_path / "seed", tmp_path / "remote.git"
    (work / PIN_PATH).parent.mkdir(parents=True)
    write_pin(work / PIN_PATH, None)
    for cmd in (["git", "init", "-q", "-b", "main", str(work)], ["git", "-C", str(work), "add", "-A"],
                ["git", "-C", str(work), "commit", "-q", "-m", "nothing pinned"],
                ["git", "clone", "-q", "--bare", str(work), str(remote)]):
        subprocess.run(cmd, check=True, capture_output=True)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'branch protection: pushes to main need review' >&2\nexit 1\n")
    hook.chmod(0o755)
    return remote


@pytest.mark.slow
def test_proposal_error_fails_the_run_but_keeps_the_version(trainer_factory, mlflow_server, fast_grid: Path,
                                                            tmp_path: Path):
    """The real promotion step, against a remote that refuses the push."""
    remote = _rejecting_remote(tmp_path)
    before = _versions(mlflow_server.uri)
    result = trainer_factory(mlflow_server.uri)(*ARGS, "--candidates", str(fast_grid),
                                                env={"PRIMER_GIT_REMOTE": str(remote), "PRIMER_FORGE": "none"})
    assert result.exit_code == 1, result.output
    assert "promotion failed:" in result.output and "branch protection: pushes to main need review" in result.output
    assert _versions(mlflow_server.uri) == before + 1
    version = MlflowClient(tracking_uri=mlflow_server.uri).get_model_version_by_alias(MODEL_NAME, "challenger")
    assert f"[register] {MODEL_NAME} v{version.version} " in result.output
    assert f"v{version.version} stays registered" in result.output
    assert version.tags["promotion_status"] == "proposal_failed"  # the next run retries it
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_unloadable_champion_is_reported_not_fatal(trainer_factory, mlflow_server, fast_grid: Path):
    """A pin naming a version the registry lacks: warn, register anyway, mark the champion unavailable."""
    train = trainer_factory(mlflow_server.uri)
    train.pin_version(99999)
    result = train(*ARGS, "--candidates", str(fast_grid), "--no-promote")
    assert result.exit_code == 0, result.output
    assert f"WARNING: champion {MODEL_NAME} v99999 could not be loaded" in result.output
    assert "[champion] v99999 on the same rows: unavailable" in result.output
    assert train.last.evaluation.champion_version == 99999 and train.last.evaluation.champion is None
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    version = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    parent = client.get_run(client.get_run(version.run_id).data.tags["mlflow.parentRunId"])
    assert parent.data.tags["champion_version"] == "99999"
    assert not any(k.startswith("champion_") for k in parent.data.metrics)


def test_any_source_spec_trains_against_a_database_tracking_uri(trainer_factory, fast_grid: Path,
                                                                 tmp_path: Path) -> None:
    """MLFLOW_TRACKING_URI=sqlite:///...: the dataset input points at the window's CSV artifact.
    It used to be the source spec itself, which MLflow cannot resolve once it has a colon."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train = trainer_factory(uri)
    result = train("--source", "synthetic:7:1.0", "--train-years", "1", "--eval-days", "60", "--candidates",
                   str(fast_grid), "--no-promote")
    assert result.exit_code == 0, result.output
    assert train.last is not None and train.last.evaluation is not None
    run = MlflowClient(uri).get_run(train.last.evaluation.parent_run_id)
    assert run.inputs.dataset_inputs, "the data window is not the run's dataset input"
    source = run.inputs.dataset_inputs[0].dataset.source
    assert "data/prices.csv" in source, source
