"""Every MLflow UI link the project prints or writes opens the machine-learning view of what it names.

MLflow 3's UI lands on GenAI pages (traces, an assistant) unless a link asks for
``workflowType=machine_learning``. Links are built in one place (contract/ui.py); this
scans the code, the docs and the cluster scripts for any other, and checks the PR body.
The browser test (tests/e2e/test_browser.py) opens the links `primer up` prints.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from contract import ui
from contract.evidence import Evaluation, Scores

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("contract", "ml", "promotion", "bentos", "primer")
# An MLflow server: local (5000), the lab's NodePort (30500). 192.168.56.10:5000 is the image registry.
MLFLOW_URL = re.compile(r"https?://(?!192\.168\.56\.10:)[^\s`'\")<>|]+:(?:5000|30500)\b[^\s`'\")<>|]*")
# Lines where such a URL is a tracking URI for a client (configuration), not a page to open.
TRACKING_CONTEXT = re.compile(r"MLFLOW_TRACKING_URI|tracking|--backend|port-forward|mlflow server", re.I)


def _text_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "cluster-bootstrap").glob("*.sh"))]
    return [f for f in files if f.name != "configuration.md"]  # generated: defaults are tracking URIs


def _bad_links(text: str) -> list[str]:
    bad = []
    for line in text.splitlines():
        for url in MLFLOW_URL.findall(line):
            if "#/" in url:
                if ui.ML_VIEW not in url:
                    bad.append(url)
            elif not TRACKING_CONTEXT.search(line):
                bad.append(url)  # the bare root: MLflow 3 lands on its GenAI pages
    return bad


def test_the_scan_finds_what_it_should() -> None:
    """The scans below pass on anything if they cannot see a bad link."""
    assert _bad_links("| MLflow UI | http://127.0.0.1:5000 |") == ["http://127.0.0.1:5000"]
    assert _bad_links("open http://127.0.0.1:5000/#/experiments/1") == ["http://127.0.0.1:5000/#/experiments/1"]
    assert _bad_links("export MLFLOW_TRACKING_URI=http://127.0.0.1:5000") == []
    assert _bad_links(f"open http://h:30500/#/models/m?{ui.ML_VIEW}") == []
    assert _bad_links("image 192.168.56.10:5000/mlops-primer and http://192.168.56.10:5000/v2/") == []


@pytest.mark.parametrize("path", _text_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_docs_and_scripts_link_the_ml_view(path: Path) -> None:
    assert _bad_links(path.read_text()) == []


def test_ui_routes_are_built_only_by_contract_ui() -> None:
    builders = []
    for package in PRODUCT:
        for path in (REPO / package).rglob("*.py"):
            if path == REPO / "contract" / "ui.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if "/#/" in line:
                    builders.append(f"{path.relative_to(REPO)}:{n}")
    assert builders == []


def test_every_link_in_a_pull_request_body_opens_the_ml_view() -> None:
    from promotion.policy import Policy, decide
    from promotion.propose import pr_body

    s = Scores(accuracy=0.55, balanced_accuracy=0.55, roc_auc=0.55, log_loss=0.69, brier=0.25)
    e = Evaluation(model_name="spy-direction", challenger_version=4, challenger_run_id="r4", challenger_candidate="rf",
                   parent_run_id="p", experiment_id="1", tracking_uri="http://user:secret@127.0.0.1:5000",
                   eval_start=date(2024, 1, 2), eval_end=date(2024, 3, 27), eval_days=60, challenger=s,
                   data_source="synthetic", champion_version=3, champion=s)
    body = pr_body(e, decide(e, Policy()), Policy())
    links = re.findall(r"https?://\S+", body)
    assert len(links) >= 4 and all("#/" in link and ui.ML_VIEW in link for link in links), links
    assert "secret" not in body
    assert f"http://127.0.0.1:5000/#/models/spy-direction/versions/3?{ui.ML_VIEW}" in links
    assert f"http://127.0.0.1:5000/#/experiments/1/runs/r4?{ui.ML_VIEW}" in links


@pytest.mark.parametrize("path", _text_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_model_links_name_the_registered_model(path: Path) -> None:
    """Scripts cannot import contract/names.py: their `#/models/<name>` links must still agree with it."""
    from contract.names import MODEL_NAME

    named = set(re.findall(r"#/models/([A-Za-z0-9_.-]+)", path.read_text()))
    assert named <= {MODEL_NAME}, named
