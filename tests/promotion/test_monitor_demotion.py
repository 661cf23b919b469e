"""Issue 13's demotion acceptance, end to end through `primer monitor`.

A real version is trained by the pipeline on data with a strong planted signal, up to an
anchor, and pinned in a real git remote. Its answers for the next 80 trading days are
computed by the service's own loader and written by the service's own log writer. Then
`primer monitor` runs against a real MLflow server and the forge stand-in:

* on ``synthetic:SEED:3:ANCHOR`` the signal is gone after the anchor: the pinned model is
  significantly worse than climatology, and exactly one demotion PR opens, with the
  evidence; a second run opens no other;
* on ``synthetic:SEED:3`` the model keeps its edge: no PR.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from bentos.prediction_log import PredictionLog
from bentos.runtime import load_served_model
from contract import prediction_log as schema
from contract.names import MONITORING_EXPERIMENT_NAME, PIN_PATH, demotion_branch
from contract.pin import write_pin
from ml.data import load_prices
from ml.features import FEATURE_COLUMNS, build_features
from ml.monitor import read_reports
from primer.cli import main as primer
from tests.promotion.conftest import Registry, Repos, git, use_forge
from tests.promotion.fakeforge import FakeForge
from tests.support import REPO_ROOT, console_script, scrubbed_env, write_pin_text

pytestmark = pytest.mark.slow

SEED, ANCHOR, LIVE_DAYS = 11, date(2024, 6, 28), 80
KEPT, BROKEN = f"synthetic:{SEED}:3", f"synthetic:{SEED}:3:{ANCHOR}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, promo_mlflow: Registry) -> int:
    """A pipeline-trained version on the signal, with data up to ANCHOR only (the replay clock stands there)."""
    pin = write_pin_text(tmp_path_factory.mktemp("pin") / "model-version.yaml", None)
    env = scrubbed_env(MLFLOW_TRACKING_URI=promo_mlflow.uri, PRIMER_PIN_FILE=str(pin), PRIMER_MODE="replay",
                       PRIMER_REPLAY_START=ANCHOR.isoformat(), PRIMER_REPLAY_EPOCH="2099-01-01T00:00:00Z")
    done = subprocess.run([console_script("primer"), "train", "--source", KEPT, "--no-promote", "--eval-days", "250"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    versions = MlflowClient(promo_mlflow.uri).search_model_versions("name='spy-direction'")
    return max(int(v.version) for v in versions)


def _own_copy(uri: str, version: int) -> int:
    """A new version of the same trained model (same run, same tags): each test judges its own version,
    so their live records in the shared MLflow stay apart."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from contract.settings import env_restored

    mv = MlflowClient(uri).get_model_version("spy-direction", str(version))
    with env_restored("MLFLOW_TRACKING_URI"), _use_tracking_uri(uri):
        return int(mlflow.register_model(mv.source, "spy-direction", tags=mv.tags).version)


def _serve_the_days_after_the_anchor(uri: str, version: int, source: str, log_url: str) -> list[pd.Timestamp]:
    """The pinned version's answer for each of the LIVE_DAYS trading days after ANCHOR, written as the service does."""
    model = load_served_model(uri, version)
    features = build_features(load_prices(source))
    days = features.index[features.index > pd.Timestamp(ANCHOR)][:LIVE_DAYS]
    log = PredictionLog(log_url)
    for day in days:
        row = features.loc[[day], list(FEATURE_COLUMNS)]
        log.record({schema.MODEL_VERSION: version, schema.AS_OF: day.date(), schema.P_UP: model.p_up_rows(row)[0],
                    schema.STALE: False, schema.FEATURES: json.dumps(row.iloc[0].to_dict()),
                    schema.PUBLISHED_AT: datetime.now(UTC), schema.HOST: "test", schema.PID: 1})
    assert log.flush() and log.written == len(days) == LIVE_DAYS
    return list(days)


def _monitor(monkeypatch: pytest.MonkeyPatch, source: str, log_url: str) -> str:
    monkeypatch.setenv("PRIMER_DATA_SOURCE", source)
    monkeypatch.setenv("PRIMER_PREDICTION_LOG", log_url)
    r = CliRunner().invoke(primer, ["monitor"])
    assert r.exit_code == 0, r.output
    return r.output


def _pin_on_main(repos: Repos, version: int) -> None:
    write_pin(repos.work / PIN_PATH, version)
    git("commit", "-q", "-am", f"Pin v{version}", cwd=repos.work)
    git("push", "-q", "origin", "main", cwd=repos.work)


def _pinned_and_served(repos: Repos, reg: Registry, trained: int, forge: FakeForge, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch, source: str) -> tuple[int, str]:
    """A copy of the trained version pinned on main, its answers after the anchor logged; (version, log URL)."""
    version = _own_copy(reg.uri, trained)
    _pin_on_main(repos, version)
    monkeypatch.setenv("PRIMER_PIN_FILE", str(repos.work / PIN_PATH))
    use_forge(monkeypatch, forge)
    log_url = f"sqlite:///{tmp_path / 'predictions.db'}"
    _serve_the_days_after_the_anchor(reg.uri, version, source, log_url)
    return version, log_url


def test_a_model_whose_signal_is_gone_gets_exactly_one_demotion_pr(
        promo_env: Repos, promo_mlflow: Registry, trained: int, gitea: FakeForge, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    trained, log_url = _pinned_and_served(promo_env, promo_mlflow, trained, gitea, tmp_path, monkeypatch, BROKEN)

    out = _monitor(monkeypatch, BROKEN, log_url)
    assert "DEMOTION WARRANTED" in out, out
    [pr] = gitea.open_prs()
    target = int(pr["head"]["ref"].rsplit("-v", 1)[1])
    assert pr["head"]["ref"] == demotion_branch(trained, target) and target != trained
    assert f"demotion to v{target} proposed: {pr['html_url']}" in out
    # The live evidence is in the body: the days, the losses, the gate's test on them.
    body = pr["body"]
    assert f"**{LIVE_DAYS}** scored live days" in body, body
    assert "climatology" in body and "p = " in body, body
    assert promo_env.remote_pin(pr["head"]["ref"]).endswith(f"version: {target}")
    assert promo_env.remote_pin("main").endswith(f"version: {trained}")  # proposed, never merged

    # The next run: the same evidence, the same PR; nothing new opened.
    again = _monitor(monkeypatch, BROKEN, log_url)
    assert "already proposed" in again, again
    assert len(gitea.open_prs()) == 1 and len(gitea.prs) == 1


def test_a_model_that_keeps_its_edge_is_not_demoted(
        promo_env: Repos, promo_mlflow: Registry, trained: int, gitea: FakeForge, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    trained, log_url = _pinned_and_served(promo_env, promo_mlflow, trained, gitea, tmp_path, monkeypatch, KEPT)

    out = _monitor(monkeypatch, KEPT, log_url)
    live = [line for line in out.splitlines() if line.startswith("live v")]
    assert len(live) == 1 and f"v{trained}: {LIVE_DAYS} scored day(s)" in live[0], out
    # Drift was computed for the pinned version against its training window (read from its run).
    report = read_reports(log_url)[trained]
    assert report.drift is not None and report.drift.skew == 0.0 and report.drift.skew_rows > 0, report
    assert "; drift: " in live[0]
    client = MlflowClient(promo_mlflow.uri)
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT_NAME)
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id], f"tags.model_version = '{trained}'")
    [psi] = client.get_metric_history(run.info.run_id, "drift_psi_ret_1")  # logged at the newest step
    assert psi.step == LIVE_DAYS and psi.value == pytest.approx(report.drift.psi["ret_1"])
    assert "DEMOTION WARRANTED" not in out and "[demote]" not in out, out
    assert gitea.prs == [] and promo_env.remote_pin("main").endswith(f"version: {trained}")


def test_no_demotion_of_a_version_git_no_longer_pins(
        promo_env: Repos, promo_mlflow: Registry, trained: int, gitea: FakeForge, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The mounted pin can lag git (a ConfigMap): when git already pins another version, nothing is
    proposed and no climatology version is registered for a demotion that cannot happen."""
    judged, log_url = _pinned_and_served(promo_env, promo_mlflow, trained, gitea, tmp_path, monkeypatch, BROKEN)
    monkeypatch.setenv("PRIMER_PIN_FILE", str(write_pin_text(tmp_path / "mounted.yaml", judged)))
    _pin_on_main(promo_env, trained)  # git moved on meanwhile
    client = MlflowClient(promo_mlflow.uri)
    before = len(client.search_model_versions("name='spy-direction'"))

    out = _monitor(monkeypatch, BROKEN, log_url)
    assert "DEMOTION WARRANTED" in out and f"git now pins v{trained}" in out, out
    assert gitea.prs == [] and len(client.search_model_versions("name='spy-direction'")) == before
