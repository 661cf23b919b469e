"""Registry, on both backends (SQLite and PostgreSQL), against the session's real MLflow servers.

One story per backend: `primer train --source synthetic` registers a version
(v1 on an empty registry) with its tags, alias, nested candidate runs, plots
and dataset; a second run with the pin naming that version registers the next
one and re-scores the pinned version on its own evaluation window. The
servers are shared with other tests, so versions are asserted relative to
each other (N, then N+1), never as literal numbers.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from contract.names import CHALLENGER_ALIAS, EXPERIMENT_NAME, MODEL_NAME, Tag
from ml import tracking as registry
from ml.data import load_prices
from ml.evaluate import score, split_windows
from ml.features import FEATURE_COLUMNS, build_features, labeled
from ml.folds import recipe_from_json
from ml.tracking import _scoped_uri
from ml.train import FAMILIES, fit, load_grid
from tests.ml.conftest import Trainer
from tests.support import register_tiny_version

FIRST_ANCHOR = date(2024, 3, 28)
SECOND_ANCHOR = date(2024, 6, 28)


def _scores_from_output(output: str, prefix: str) -> dict[str, float]:
    line = next(ln for ln in output.splitlines() if ln.startswith(prefix))
    words = line[len(prefix):].split()
    return {words[i]: float(words[i + 1]) for i in range(0, len(words) - 1, 2) if words[i + 1] != "n/a"}


def _registered(train: Trainer, output: str) -> int:
    """The version the run registered: its PipelineResult's, which the output names too."""
    assert train.last is not None, output
    assert f"\n[register] {MODEL_NAME} v{train.last.version} " in "\n" + output, output
    return train.last.version


@pytest.mark.slow
def test_two_runs_register_then_rescore_the_pinned_champion(any_mlflow_server, trainer_factory, fast_grid: Path):
    uri = any_mlflow_server.uri
    train = trainer_factory(uri)
    client = MlflowClient(tracking_uri=uri)

    # ---- run 1: packaged grid (every family), nothing pinned yet
    first = train("--source", "synthetic:7", "--anchor", FIRST_ANCHOR.isoformat(), "--train-years", "2", "--no-promote")
    assert first.exit_code == 0, first.output
    assert "[champion] none pinned yet" in first.output
    n = _registered(train, first.output)
    assert train.last.evaluation.champion_version is None
    v1 = client.get_model_version(MODEL_NAME, str(n))
    assert v1.tags[Tag.PROMOTION_STATUS] == "candidate"
    assert v1.tags[Tag.DATA_SOURCE] == "synthetic:7"
    assert v1.tags[Tag.GIT_SHA] == "unknown"  # PRIMER_REPO_DIR is an empty folder here, not a checkout
    eval_start, eval_end = date.fromisoformat(v1.tags[Tag.EVAL_START]), date.fromisoformat(v1.tags[Tag.EVAL_END])
    # The comparison rows: the last 1,000+ labelled days, the anchor's own (unlabelled) row left out.
    assert eval_end < FIRST_ANCHOR and np.busday_count(eval_start, eval_end) >= 999
    assert recipe_from_json(v1.tags[Tag.RECIPE]).name == train.last.evaluation.challenger_candidate
    assert client.get_model_version_by_alias(MODEL_NAME, CHALLENGER_ALIAS).version == str(n)

    # The version's run is the winning candidate: a nested run of the pipeline's parent run.
    best = client.get_run(v1.run_id)
    parent_id = best.data.tags["mlflow.parentRunId"]
    exp = client.get_experiment_by_name(EXPERIMENT_NAME)
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert {r.data.tags["candidate"] for r in children} == {c.name for c in load_grid().candidates}
    for run in children:
        for metric in ("accuracy", "balanced_accuracy", "roc_auc", "log_loss", "brier", "val_log_loss"):
            assert metric in run.data.metrics, (run.data.tags["candidate"], metric)
        assert run.data.params["family"] in FAMILIES
    assert best.data.tags["selected"] == "true"
    # Chosen on the selection folds (before the comparison rows); at bootstrap, climatology
    # replaces a choice that does not beat it.
    val = {r.data.tags["candidate"]: r.data.metrics["val_log_loss"] for r in children}
    assert val[best.data.tags["candidate"]] == min(val.values()) or (
        best.data.tags["candidate"] == "climatology" and "the first pin is climatology" in first.output)
    for metric in ("ece", "brier_reliability", "brier_resolution", "brier_uncertainty"):
        assert metric in best.data.metrics
    artifacts = {a.path for a in client.list_artifacts(v1.run_id, "plots")}
    assert artifacts == {"plots/confusion_matrix.png", "plots/roc_curve.png", "plots/calibration.png"}
    png = Path(client.download_artifacts(v1.run_id, "plots/roc_curve.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evidence = {a.path for a in client.list_artifacts(best.data.tags["mlflow.parentRunId"], "evidence")}
    assert evidence == {"evidence/reliability.png", "evidence/cumulative_loss.png"}
    parent_metrics = client.get_run(best.data.tags["mlflow.parentRunId"]).data.metrics
    for metric in ("baseline_always_up_accuracy", "baseline_climatology_log_loss", "comparison_rows",
                   "challenger_vs_climatology_p_value", "challenger_vs_climatology_ci_low"):
        assert metric in parent_metrics, metric

    # Latest feature row for serving, as of the anchor.
    latest = registry.Tracker(uri).latest_features(v1.run_id)
    assert latest["as_of"] == FIRST_ANCHOR.isoformat()
    assert list(latest["features"]) == list(FEATURE_COLUMNS)

    # The data window: dataset input + CSV artifact on the parent run, identical to the source.
    parent = client.get_run(parent_id)
    inputs = parent.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name.startswith("spy-daily")
    schema = json.loads(inputs[0].dataset.schema)
    assert {c["name"] for c in schema["mlflow_colspec"]} >= {"date", "close", "volume"}
    csv = pd.read_csv(client.download_artifacts(parent_id, "data/prices.csv"), parse_dates=["date"])
    assert csv["date"].iloc[-1].date() == FIRST_ANCHOR
    source = load_prices("synthetic:7", end=FIRST_ANCHOR).tail(len(csv)).reset_index(drop=True)
    pd.testing.assert_frame_equal(csv, source, check_dtype=False)
    assert json.loads(inputs[0].dataset.source)["url"].startswith(uri)

    # Serving's view: the model loads back from the registry and predicts probabilities.
    model = registry.Tracker(uri).load_version(n)
    row = pd.DataFrame([latest["features"]])
    p = model.predict_proba(row)
    assert p.shape == (1, 2) and 0.0 < p[0, 1] < 1.0
    with _scoped_uri(uri):  # MLflow resolves models:/ through its global URI
        pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{n}")
    assert np.allclose(np.asarray(pyfunc.predict(row)), p)

    # ---- run 2: a later anchor, the pin names version n
    train.pin_version(n)
    second = train("--source", "synthetic:7", "--anchor", SECOND_ANCHOR.isoformat(), "--train-years", "2",
                   "--candidates", str(fast_grid), "--no-promote")
    assert second.exit_code == 0, second.output
    assert _registered(train, second.output) == n + 1
    result = train.last.evaluation
    assert result.challenger_version == n + 1 and result.champion_version == n and result.champion is not None
    v2 = client.get_model_version(MODEL_NAME, str(n + 1))
    assert client.get_model_version_by_alias(MODEL_NAME, CHALLENGER_ALIAS).version == str(n + 1)
    assert v2.tags[Tag.EVAL_END] > v1.tags[Tag.EVAL_END]
    prefix = f"[champion] v{n} on the same rows:"
    assert prefix in second.output
    assert "optimistic" not in second.output  # its recipe is recorded: refitted per fold, never in-sample
    reported = _scores_from_output(second.output, prefix)

    # Independently: version n's recipe refitted on the past of each of run 2's folds, by hand.
    recipe = recipe_from_json(v1.tags[Tag.RECIPE])
    rows = labeled(build_features(load_prices("synthetic:7", end=SECOND_ANCHOR)))
    comparison = result.comparison
    assert comparison is not None and comparison.champion_refitted
    first_day = rows.index.get_loc(pd.Timestamp(result.eval_start))
    p_up = []
    for start, stop in _fold_edges(rows.index, first_day, comparison.fold_months):
        model = fit(recipe, rows.iloc[max(0, start - 504):start])
        p_up.append(model.predict_proba(rows.iloc[start:stop][list(FEATURE_COLUMNS)])[:, 1])
    y = rows["label"].iloc[first_day:]
    expected = score(y, np.concatenate(p_up))
    assert len(y) == result.eval_days == len(comparison.champion_loss)
    assert rows.index[-1].date() == result.eval_end and result.eval_end < SECOND_ANCHOR
    assert result.champion.log_loss == pytest.approx(expected.log_loss)
    assert result.champion.brier == pytest.approx(expected.brier)
    assert result.eval_start.isoformat() == v2.tags[Tag.EVAL_START]
    assert result.eval_end.isoformat() == v2.tags[Tag.EVAL_END]
    # ...and the line the operator reads says so.
    assert reported["acc"] == pytest.approx(expected.accuracy, abs=5e-4)
    assert reported["log_loss"] == pytest.approx(expected.log_loss, abs=5e-5)
    parent2 = client.get_run(client.get_run(v2.run_id).data.tags["mlflow.parentRunId"])
    assert parent2.data.metrics["champion_log_loss"] == pytest.approx(expected.log_loss)
    assert parent2.data.tags["champion_version"] == str(n)
    evaluation = json.loads(Path(client.download_artifacts(parent2.info.run_id, "evaluation.json")).read_text())
    assert evaluation["champion_version"] == n and evaluation["challenger_version"] == n + 1
    assert evaluation["eval_start"] == v2.tags[Tag.EVAL_START] and evaluation["eval_days"] >= 1000
    # Version n itself is unchanged.
    assert client.get_model_version(MODEL_NAME, str(n)).tags[Tag.PROMOTION_STATUS] == "candidate"


def _fold_edges(index: pd.DatetimeIndex, first: int, months: int) -> list[tuple[int, int]]:
    """Calendar blocks of ``months`` months from position ``first`` to the end."""
    block = ((index.year - 1970) * 12 + index.month - 1) // months
    edges = [first] + [i for i in range(first + 1, len(index)) if block[i] != block[i - 1]] + [len(index)]
    return list(zip(edges[:-1], edges[1:], strict=True))


@pytest.mark.slow
def test_a_champion_without_a_recipe_is_scored_as_registered_and_flagged(mlflow_server, trainer_factory,
                                                                         fast_grid: Path):
    """A version registered before the walk-forward gate records no recipe: it cannot be refitted per
    fold, so it is scored as it is (possibly in-sample: optimistic), and the run and the evidence say so."""
    train = trainer_factory(mlflow_server.uri)
    tracker = registry.Tracker(mlflow_server.uri)
    n, _ = register_tiny_version(mlflow_server.uri, tracker.experiment_id("ml-tests-no-recipe"))
    train.pin_version(n)
    result = train("--source", "synthetic:7", "--train-years", "1", "--eval-days", "60", "--candidates",
                   str(fast_grid), "--no-promote", "--anchor", SECOND_ANCHOR.isoformat())
    assert result.exit_code == 0, result.output
    assert f"WARNING: champion {MODEL_NAME} v{n} records no recipe; it is scored as registered" in result.output
    comparison = train.last.evaluation.comparison
    assert comparison is not None and not comparison.champion_refitted
    assert comparison.champion_loss is not None and len(comparison.champion_loss) == train.last.evaluation.eval_days


@pytest.mark.parametrize("family", ["climatology", "random_forest", "logistic_regression", "gradient_boosting"])
def test_every_family_round_trips_as_training_and_serving_load_it(family: str, mlflow_server,
                                                                  market: pd.DataFrame):
    """What log_model writes, MLflow's loader (training) and serving's REST reader load back."""
    from bentos.model_store import read_version
    from contract.names import LATEST_FEATURES_ARTIFACT
    from ml.train import fit

    tracker = registry.Tracker(mlflow_server.uri)
    cand = next(c for c in load_grid().candidates if c.family == family)
    w = split_windows(build_features(market.tail(400).reset_index(drop=True)), 60)
    model = fit(cand, w.train)
    run_id = tracker.start_run(tracker.experiment_id("ml-tests-formats"), f"format-{family}", {})
    model_uri = tracker.log_model(run_id, model, w.train)
    loaded = tracker.load_model(model_uri)
    # A version with no alias, so the other tests' aliases on this shared server stay put.
    if not tracker.client.search_registered_models(f"name = '{MODEL_NAME}'"):
        tracker.client.create_registered_model(MODEL_NAME)
    version = tracker.client.create_model_version(MODEL_NAME, source=model_uri, run_id=run_id,
                                                  model_id=model_uri.removeprefix("models:/")).version
    served = read_version(mlflow_server.uri, int(version), LATEST_FEATURES_ARTIFACT)
    X = w.eval.loc[:, list(FEATURE_COLUMNS)]
    assert np.allclose(loaded.predict_proba(X), model.predict_proba(X))
    assert np.array_equal(served.estimator.predict_proba(X), model.predict_proba(X))


def test_git_sha_of_a_checkout_and_outside_one(tmp_path: Path):
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert registry.git_sha(repo) == head and len(head) == 40
    assert registry.git_sha(tmp_path / "no-repo") == "unknown"
