"""`bentoml build` with bentos/bentofile.yaml produces a bento holding the service and its packages, offline."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from ml.servers import console_script
from tests.serving.conftest import REPO_ROOT


def test_bentoml_build_packs_service_ml_and_promotion(tmp_path: Path) -> None:
    home = tmp_path / "bentoml-home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    res = subprocess.run(
        [console_script("bentoml"), "build", "-f", "bentos/bentofile.yaml", ".", "-o", "tag"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = re.search(r"__tag__:primer:(\w+)", res.stdout)
    assert m, res.stdout
    bento = home / "bentos" / "primer" / m.group(1)
    src = bento / "src"
    for rel in ("bentos/service.py", "bentos/runtime.py", "ml/features.py", "ml/data.py", "promotion/pin.py",
                "promotion/names.py", "promotion/model-version.yaml"):
        assert (src / rel).is_file(), f"{rel} missing from the bento"
    assert not list(src.rglob("test_*.py")), "tests must not ship in the bento"
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "bentos.service:PrimerService"
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    for pkg in ("bentoml", "mlflow", "scikit-learn", "skops", "pandas"):
        assert pkg in reqs
