"""`primer status` without a service (the drift check against a real `bentoml serve` is in
tests/serving/test_service.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner

from contract.names import PIN_PATH
from primer.cli import PrimerGroup
from primer.promotion_commands import COMMANDS
from tests.promotion.conftest import Registry, Repos

CLI = PrimerGroup("primer", commands=list(COMMANDS))


def test_status_names_the_pinning_commit_with_a_relative_pin_file(
        promo_env: Repos, promo_mlflow: Registry, new_version: Callable[[], tuple[int, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # PRIMER_PIN_FILE relative to the cwd used to be looked up again from the pin's own folder.
    v, _ = new_version()
    runner = CliRunner()
    assert runner.invoke(CLI, ["promote", str(v)]).exit_code == 0
    r = runner.invoke(CLI, ["pin", "check"])  # default FILE: the repository's pin
    assert r.exit_code == 0 and f"v{v} (exists in the registry)" in r.output
    monkeypatch.chdir(promo_env.work)
    monkeypatch.setenv("PRIMER_PIN_FILE", PIN_PATH)
    r = runner.invoke(CLI, ["status"])
    assert r.exit_code == 0, r.output
    assert f"pin (git):            v{v}   [" in r.output and f" Promote spy-direction to v{v}]" in r.output


def test_status_never_says_in_sync_when_mlflow_cannot_be_asked(promo_env: Repos,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import free_port

    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", unreachable)
    runner = CliRunner()
    r = runner.invoke(CLI, ["status"])  # git pins nothing: the only question is MLflow's
    assert r.exit_code == 0, r.output
    assert "in sync" not in r.output and f"NOT CHECKED: MLflow at {unreachable}" in r.output
    r = runner.invoke(CLI, ["status", "--strict"])
    assert r.exit_code == 3, r.output


def test_status_says_whether_the_champion_still_beats_climatology(
        promo_env: Repos, promo_mlflow: Registry, new_version: Callable[[], tuple[int, str]]) -> None:
    """From the latest run's evidence (the challenger's evaluation.json); an evaluation from before
    the walk-forward gate (no per-day losses) prints no such line and breaks nothing."""
    import json
    from dataclasses import replace

    import numpy as np
    from mlflow import MlflowClient

    from contract.evidence import Comparison
    from contract.names import CHALLENGER_ALIAS, MODEL_NAME
    from tests.promotion.conftest import make_evaluation, record_evaluation

    champion, _ = new_version()
    runner = CliRunner()
    assert runner.invoke(CLI, ["promote", str(champion)]).exit_code == 0
    latest, run_id = new_version()
    MlflowClient(promo_mlflow.uri).set_registered_model_alias(MODEL_NAME, CHALLENGER_ALIAS, str(latest))
    old = make_evaluation(promo_mlflow, latest, run_id, 0.52, champion=(champion, 0.5))
    record_evaluation(promo_mlflow, old)
    r = runner.invoke(CLI, ["status"])
    assert r.exit_code == 0 and "vs climatology:" not in r.output, r.output

    climatology = list(0.69 + 0.01 * np.random.default_rng(3).standard_normal(1000))
    worse = [x + 0.01 for x in climatology]  # the champion loses 0.01 nats/day to climatology
    recipe = json.dumps({"name": "logreg", "family": "logistic_regression", "params": {}})
    comparison = Comparison(folds=16, fold_months=3, challenger_recipe=recipe, challenger_loss=climatology,
                            climatology_loss=climatology, champion_recipe=recipe, champion_loss=worse)
    record_evaluation(promo_mlflow, replace(old, eval_days=1000, comparison=comparison))
    r = runner.invoke(CLI, ["status"])
    assert r.exit_code == 0, r.output
    assert (f"vs climatology:       v{champion} does NOT beat climatology: log loss lower by -0.0100 nats/day"
            in r.output), r.output
    assert f"over 1000 walk-forward rows to 2024-03-27 (v{latest}'s run)" in r.output
