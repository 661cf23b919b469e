"""A learner's first look, in a real browser: the MLflow links `primer up` prints open the ML view.

`primer up --offline` runs in a copy of this repository; the links are parsed from what it
printed (never rebuilt here) and opened in headless Chromium (Debian's package), which can
reach nothing but loopback. Each page must show what its link names: the experiment's runs,
the selected run with its plots rendered, the model's versions with the `champion` alias on
the pinned one. Screenshots are kept in test-artifacts/screenshots/ (the README shows one).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from contract.names import MODEL_NAME, PIN_PATH
from contract.pin import read_pin
from contract.ui import ML_VIEW
from tests.browser import Browser, Page
from tests.e2e.test_local_loop import _primer
from tests.support import REPO_ROOT, free_port

pytestmark = pytest.mark.slow
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
PLOTS = ("confusion_matrix", "roc_curve", "calibration")
LOOPBACK_ONLY = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def _links(output: str) -> list[str]:
    return re.findall(r"https?://127\.0\.0\.1:\d+/#/\S+", output)


def _open(page: Page, url: str, *texts: str) -> str:
    page.goto(url)
    page.wait_for_text(*texts, timeout=30)
    return str(page.text())


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(SCREENSHOTS / f"{name}.png")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by .ci/run")
def test_the_links_primer_up_prints_open_runs_plots_and_versions(loop_repo: tuple[Path, dict[str, str]]) -> None:
    repo, env = loop_repo
    mlflow_port, api_port = free_port(), free_port()
    up = _primer(repo, env, "up", "--offline", "--mlflow-port", str(mlflow_port), "--port", str(api_port))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        printed = up.stdout + up.stderr
        links = _links(printed)
        assert links and all(ML_VIEW in link for link in links), links
        experiment = next(u for u in links if re.search(r"#/experiments/\d+\?", u))
        run = next(u for u in links if "/runs/" in u)
        model = next(u for u in links if u.split("#/")[1].startswith(f"models/{MODEL_NAME}?"))
        selected = re.search(r"\[select\] challenger: (\S+)", printed)
        assert selected, printed
        # The first answer `primer up` prints is a fresh one, not the row stored at training time.
        answer = re.search(r"-> (\{.*\})", printed)
        assert answer and json.loads(answer.group(1))["stale"] is False, printed

        with Browser(resolver_rules=LOOPBACK_ONLY) as browser:
            page = browser.new_page()
            text = _open(page, experiment, "train-", "matching runs")
            assert "workflowType=machine_learning" in page.eval("location.hash")
            assert "No data available" not in text  # not the GenAI overview
            _shot(page, "experiment-runs")

            text = _open(page, run, selected.group(1), "selected", "Metrics")
            _shot(page, "selected-run")
            base, _, query = run.partition("?")
            for plot in PLOTS:  # a tab each: one page load per plot, as a user opening the link
                page = browser.new_page()
                page.goto(f"{base}/artifacts/plots/{plot}.png?{query}")
                image = json.dumps(f'img[alt="plots/{plot}.png"]')
                assert page.wait_for(f"(() => {{ const i = document.querySelector({image}); "
                                     "return i && i.complete && i.naturalWidth > 0 })()", timeout=30), plot
                assert any(status == 200 and "/get-artifact?" in url and plot in url
                           for status, url in page.responses()), plot
            _shot(page, "plot-calibration")

            pinned = read_pin(repo / PIN_PATH).version
            _open(page, model, f"Version {pinned}")
            _shot(page, "model-versions")
            champion = page.wait_for("(() => { const a = document.querySelector('[role=status][title=champion]');"
                                     " const row = a && a.closest('tr, [role=row]');"
                                     " return row ? row.innerText : '' })()", timeout=30)
            assert f"Version {pinned}" in champion, champion  # the alias sits on the pinned version
            network = [url for _, url in page.responses()]
            assert all(url.startswith(("http://127.0.0.1", "blob:", "data:")) for url in network), network
    finally:
        _primer(repo, env, "down", timeout=60)
