"""`primer monitor`: answers written through the service's own log writer, scored against
the prices, every metric checked against sklearn on labels computed here from the closes."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, balanced_accuracy_score, brier_score_loss, log_loss

from bentos.prediction_log import PredictionLog
from contract import prediction_log as schema
from ml import monitor
from ml.data import load_prices
from ml.features import FEATURE_COLUMNS, build_features
from primer.cli import main as primer
from tests.support import REPO_ROOT, running_mlflow, scrub_environ, write_pin_text

SOURCE = "synthetic:7"


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def _write_log(url: str, prices: pd.DataFrame, answers: dict[int, list[int]], rng: np.random.Generator
               ) -> dict[int, dict[int, float]]:
    """Answers of each version on the given bar positions, written by the service's writer; {version: {pos: p}}."""
    features = build_features(prices)
    plog = PredictionLog(url)
    given: dict[int, dict[int, float]] = {}
    for version, positions in answers.items():
        for pos in positions:
            day = prices["date"].iloc[pos]
            p = float(rng.uniform(0.3, 0.7))
            row = {c: float(features.loc[day, c]) for c in FEATURE_COLUMNS}
            plog.record({schema.MODEL_VERSION: version, schema.AS_OF: day.date(), schema.P_UP: p,
                         schema.STALE: False, schema.FEATURES: json.dumps(row),
                         schema.PUBLISHED_AT: datetime.now(UTC), schema.HOST: "test", schema.PID: 1})
            given.setdefault(version, {})[pos] = p
    assert plog.flush() and plog.written == sum(len(v) for v in answers.values())
    return given


def _expected(close: np.ndarray, answered: dict[int, float]) -> dict[str, Any]:
    """The metrics computed independently: labels and climatology straight from the closes."""
    scored = [pos for pos in sorted(answered) if pos + 1 < len(close)]
    y = np.array([int(close[pos + 1] > close[pos]) for pos in scored])
    p = np.array([answered[pos] for pos in scored])
    # Climatology at as_of pos: up-rate of the last 2,520 moves known then (10 training years),
    # j -> j+1 for pos - 2520 <= j and j + 1 <= pos.
    clim = np.array([np.mean(close[max(0, pos - 2520) + 1 : pos + 1] > close[max(0, pos - 2520) : pos])
                     for pos in scored])
    assert 0 < y.sum() < len(y), "both outcomes must occur for the check to mean something"
    pred = (p >= 0.5).astype(int)
    return {"scored days": len(scored), "log loss": log_loss(y, p, labels=[0, 1]),
            "Brier": brier_score_loss(y, p), "accuracy": accuracy_score(y, pred),
            "bal. accuracy": balanced_accuracy_score(y, pred),
            "climatology log loss": log_loss(y, clim, labels=[0, 1]),
            "always-UP accuracy": accuracy_score(y, np.ones(len(y), dtype=int))}


def _table(output: str) -> dict[int, list[float | None]]:
    rows = [line.split() for line in output.splitlines() if line.strip()[:1].isdigit()]
    return {int(r[0]): [None if x == "-" else float(x) for x in r[1:]] for r in rows}


def _rolling(close: np.ndarray, answered: dict[int, float], days: int) -> float:
    scored = [pos for pos in sorted(answered) if pos + 1 < len(close)][-days:]
    y = np.array([int(close[pos + 1] > close[pos]) for pos in scored])
    return float(log_loss(y, [answered[pos] for pos in scored], labels=[0, 1]))


def test_monitor_scores_each_version_against_the_realized_closes(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path, mlflow_uri: str) -> None:
    scrub_environ(monkeypatch)
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    monkeypatch.setenv("PRIMER_PREDICTION_LOG", url)
    monkeypatch.setenv("PRIMER_DATA_SOURCE", SOURCE)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("PRIMER_PIN_FILE", str(write_pin_text(tmp_path / "unpinned.yaml", None)))
    prices = load_prices(SOURCE)
    n = len(prices)
    # Version 1 answered 40 days, then version 2 took over up to the last bar (not scorable yet).
    answers = {1: list(range(n - 60, n - 20)), 2: list(range(n - 25, n))}
    given = _write_log(url, prices, answers, np.random.default_rng(3))

    r = CliRunner().invoke(primer, ["monitor"])
    assert r.exit_code == 0, r.output
    table = _table(r.output)
    assert sorted(table) == [1, 2]
    close = prices["close"].astype(float).to_numpy()
    for version, answered in given.items():
        expected = _expected(close, answered)
        got = table[version]
        assert got[0] == expected["scored days"]
        for value, (name, want) in zip(got[1:7], list(expected.items())[1:], strict=True):
            assert value == pytest.approx(want, abs=6e-4), (version, name)
        assert got[7] == pytest.approx(_rolling(close, answered, 20), abs=6e-4)  # rolling: the last 20 days
    assert table[1][0] == 40 and table[2][0] == 24  # version 2's answer on the last bar waits
    # The printed table is rounded: the scores behind it match to floating-point precision.
    reports = monitor.read_reports(url)  # what the command wrote for the service's /metrics
    for version, answered in given.items():
        expected, scores = _expected(close, answered), reports[version].scores["all"]
        got_exact = [scores["model"]["log_loss"], scores["model"]["brier"], scores["model"]["accuracy"],
                     scores["model"]["balanced_accuracy"], scores["climatology"]["log_loss"],
                     scores["always_up"]["accuracy"]]
        assert got_exact == pytest.approx(list(expected.values())[1:], rel=1e-9, abs=1e-12), version
    assert "version 2: 1 answer(s) wait for their next close" in r.output
    _assert_step_series_in_mlflow(mlflow_uri, close, given)

    # A second run logs no step twice.
    again = CliRunner().invoke(primer, ["monitor"])
    assert again.exit_code == 0 and "+0 step(s)" in again.output, again.output
    _assert_step_series_in_mlflow(mlflow_uri, close, given)

    # `primer status` shows the pinned version's live record beside the pin.
    monkeypatch.setenv("PRIMER_PIN_FILE", str(write_pin_text(tmp_path / "model-version.yaml", 2)))
    status = CliRunner().invoke(primer, ["status"])
    live = [line for line in status.output.splitlines() if line.startswith("live (monitor):")]
    assert len(live) == 1 and "v2: 24 scored day(s)" in live[0], status.output
    assert f"vs climatology {table[2][5]:.4f}" in live[0], status.output


def _assert_step_series_in_mlflow(uri: str, close: np.ndarray, given: dict[int, dict[int, float]]) -> None:
    """One run per version; step k of log_loss = the log loss of its first k scored days."""
    from mlflow import MlflowClient

    from contract.names import MONITORING_EXPERIMENT_NAME

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT_NAME)
    assert experiment is not None
    for version, answered in given.items():
        runs = client.search_runs([experiment.experiment_id], f"tags.model_version = '{version}'")
        assert len(runs) == 1
        history = sorted(client.get_metric_history(runs[0].info.run_id, "log_loss"), key=lambda m: m.step)
        scored = [pos for pos in sorted(answered) if pos + 1 < len(close)]
        assert [m.step for m in history] == list(range(1, len(scored) + 1))
        for k in (1, 3, len(scored)):
            y = [int(close[pos + 1] > close[pos]) for pos in scored[:k]]
            want = log_loss(y, [answered[pos] for pos in scored[:k]], labels=[0, 1])
            assert history[k - 1].value == pytest.approx(want, rel=1e-9), (version, k)


def test_monitor_without_a_log_fails_in_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    scrub_environ(monkeypatch)
    monkeypatch.setenv("PRIMER_DATA_SOURCE", SOURCE)
    r = CliRunner().invoke(primer, ["monitor"])
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines() if hasattr(r, "stderr") else r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "PRIMER_PREDICTION_LOG" in lines[0], r.output


def test_monitor_with_an_unreachable_log_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scrub_environ(monkeypatch)
    monkeypatch.setenv("PRIMER_PREDICTION_LOG", f"sqlite:///{tmp_path / 'missing-dir' / 'log.db'}")
    r = CliRunner().invoke(primer, ["monitor"])
    assert r.exit_code != 0
    assert "error: prediction log" in r.output and "unreachable" in r.output, r.output


def test_warn_only_never_fails_the_caller(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The training CronJob runs `primer monitor --warn-only` first: a broken log must not block training."""
    scrub_environ(monkeypatch)
    monkeypatch.setenv("PRIMER_PREDICTION_LOG", f"sqlite:///{tmp_path / 'missing-dir' / 'log.db'}")
    r = CliRunner().invoke(primer, ["monitor", "--warn-only"])
    assert r.exit_code == 0, r.output
    assert "warning: primer monitor did not complete: prediction log" in r.output and "unreachable" in r.output


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by .ci/run")
def test_the_live_run_link_opens_the_stepped_metrics_in_the_mlflow_ui(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path, mlflow_uri: str) -> None:
    """What a learner clicks: the run link `primer monitor` prints shows the live record's metrics,
    and its chart of log loss has one point per scored trading day."""
    from tests.browser import Browser

    scrub_environ(monkeypatch)
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    for name, value in {"PRIMER_PREDICTION_LOG": url, "PRIMER_DATA_SOURCE": SOURCE, "MLFLOW_TRACKING_URI": mlflow_uri,
                        "PRIMER_PIN_FILE": str(write_pin_text(tmp_path / "unpinned.yaml", None))}.items():
        monkeypatch.setenv(name, value)
    prices = load_prices(SOURCE)
    n = len(prices)
    _write_log(url, prices, {7: list(range(n - 31, n - 1))}, np.random.default_rng(5))
    r = CliRunner().invoke(primer, ["monitor"])
    assert r.exit_code == 0, r.output
    link = re.search(r"MLflow: live v7 \+30 step\(s\): (\S+)", r.output)
    assert link and "workflowType=machine_learning" in link.group(1), r.output

    with Browser(resolver_rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1") as browser:
        page = browser.new_page()
        page.goto(link.group(1))
        page.wait_for_text("live v7", "log_loss", "p_worse_than_climatology", "climatology_log_loss", timeout=30)
        screenshots = REPO_ROOT / "test-artifacts" / "screenshots"
        screenshots.mkdir(parents=True, exist_ok=True)
        page.screenshot(screenshots / "live-run.png")
        # The run's "Model metrics" tab charts each metric's history: one point per scored day.
        base, _, query = link.group(1).partition("?")
        page = browser.new_page()
        page.goto(f"{base}/model-metrics?{query}")
        page.wait_for_text("Model metrics", "balanced_accuracy", "climatology_log_loss", timeout=30)
        assert page.wait_for("(() => document.querySelectorAll('.js-plotly-plot, canvas, svg.main-svg').length)()",
                             timeout=30)
        page.screenshot(screenshots / "live-metrics-charts.png")
        charted = [u for status, u in page.responses() if status == 200 and "metrics/get-history" in u]
        assert any("metric_key=balanced_accuracy" in u for u in charted), charted
        network = [u for _, u in page.responses()]
        assert all(u.startswith(("http://127.0.0.1", "blob:", "data:")) for u in network), network


def test_bad_prices_stop_the_monitor_before_anything_is_written(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """Training's validation rules apply: a bad bar is one error line, and no report is written."""
    scrub_environ(monkeypatch)
    prices = load_prices(SOURCE).tail(200).reset_index(drop=True)
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    _write_log(url, prices, {3: list(range(100, 150))}, np.random.default_rng(1))
    prices.loc[120, "close"] = -1.0  # a broken bar in the middle of the answered days
    csv = tmp_path / "prices.csv"
    prices.to_csv(csv, index=False)
    for name, value in {"PRIMER_PREDICTION_LOG": url, "PRIMER_DATA_SOURCE": f"csv:{csv}",
                        "PRIMER_PIN_FILE": str(write_pin_text(tmp_path / "pin.yaml", None))}.items():
        monkeypatch.setenv(name, value)
    r = CliRunner().invoke(primer, ["monitor"])
    assert r.exit_code != 0 and "error: " in r.output and "positive" in r.output.lower(), r.output
    assert monitor.read_reports(url) == {}
