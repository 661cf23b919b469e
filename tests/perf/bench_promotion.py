"""Promotion benchmark: how long the training run's last step takes, and where the time goes.

    /work/venv/bin/python tests/perf/bench_promotion.py [--runs 5]

All local, nothing mocked except the hosted forge (tests/promotion/fakeforge.py, the
same local stand-in the tests use): a real MLflow server (SQLite, temp dir), real git
with bare remotes — a one-commit repo and a bare clone of this repository (its real
history) — and tiny real sklearn model versions. For each timed row it prints the
median and max over --runs:

  git: clone + branch + commit + push       (promotion.gitops.push_pin_branch)
  forge: create PR                          (HttpForge.create_pr, local HTTP)
  propose_from_evaluation, new version      (gate + git + PR + supersede + MLflow tags)
  propose_from_evaluation, re-run           (idempotent: branch and PR reused)

Target on a 2-core machine: a new proposal against this repository in <= 5 s (the
CronJob runs every 5 minutes; promotion must stay a small part of it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
for var, value in (("GIT_AUTHOR_NAME", "bench"), ("GIT_AUTHOR_EMAIL", "bench@primer.invalid"),
                   ("GIT_COMMITTER_NAME", "bench"), ("GIT_COMMITTER_EMAIL", "bench@primer.invalid")):
    os.environ.setdefault(var, value)

from contract.names import PIN_PATH, POLICY_PATH, promotion_branch  # noqa: E402
from contract.pin import PIN_TEMPLATE  # noqa: E402
from contract.settings import PromotionSettings  # noqa: E402
from promotion import gitops  # noqa: E402
from promotion.forge import forge_from_settings  # noqa: E402
from promotion.policy import load_policy  # noqa: E402
from promotion.propose import Promotion, propose_from_evaluation  # noqa: E402
from tests.promotion.conftest import Registry, make_evaluation  # noqa: E402
from tests.promotion.fakeforge import FakeForge  # noqa: E402
from tests.support import register_tiny_version, running_mlflow  # noqa: E402


def sh(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def tiny_remote(tmp: Path) -> Path:
    remote, seed = tmp / "tiny.git", tmp / "seed"
    sh("git", "init", "-q", "--bare", "-b", "main", str(remote))
    (seed / "promotion").mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=seed)
    (seed / PIN_PATH).write_text(PIN_TEMPLATE)
    shutil.copy(REPO_ROOT / POLICY_PATH, seed / POLICY_PATH)
    sh("git", "add", ".", cwd=seed)
    sh("git", "commit", "-q", "-m", "seed", cwd=seed)
    sh("git", "push", "-q", str(remote), "main", cwd=seed)
    return remote


def project_remote(tmp: Path) -> Path:
    remote = tmp / "project.git"
    sh("git", "clone", "-q", "--bare", "--no-local", str(REPO_ROOT), str(remote))
    sh("git", "branch", "-f", "main", "HEAD", cwd=remote)
    return remote


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-promotion-"))
    servers = ExitStack()
    uri = servers.enter_context(running_mlflow(tmp))
    forge = FakeForge("gitea")
    rows: dict[str, list[float]] = {}
    try:
        import mlflow

        mlflow.set_tracking_uri(uri)
        exp = mlflow.set_experiment("spy-direction").experiment_id
        reg = Registry(uri, exp)

        def new_version() -> tuple[int, str]:
            return register_tiny_version(uri, exp)

        remotes = {"tiny repo": tiny_remote(tmp), "this repo": project_remote(tmp)}
        for label, remote in remotes.items():
            rows[f"git: clone+branch+commit+push ({label})"] = [
                timed(lambda i=i, remote=remote: gitops.push_pin_branch(str(remote), "main", f"bench/{i}", 1000 + i,
                                                                         "bench"))
                for i in range(args.runs)
            ]
        fc = forge_from_settings(PromotionSettings(forge="gitea", forge_url=forge.url, forge_repo=forge.repo,
                                                   forge_token=forge.token))
        rows["forge: create PR (local stand-in)"] = [
            timed(lambda i=i: fc.create_pr("t", "b", f"bench-pr/{i}", "main")) for i in range(args.runs)]

        promotion = Promotion(remote=str(remotes["this repo"]), branch="main", token=None,
                              policy=load_policy(REPO_ROOT / POLICY_PATH), forge=fc)
        champ, _ = new_version()
        sh("git", "update-ref", "refs/heads/main",
           gitops.push_pin_branch(str(remotes["this repo"]), "main", "champion", champ, "champ").commit or "",
           cwd=remotes["this repo"])
        new, rerun = [], []
        for i in range(args.runs):
            v, run_id = new_version()
            e = make_evaluation(reg, v, run_id, 0.56 + i * 0.001, champion=(champ, 0.5))
            new.append(timed(lambda e=e: propose_from_evaluation(e, promotion=promotion)))
            rerun.append(timed(lambda e=e: propose_from_evaluation(e, promotion=promotion)))
        rows["propose_from_evaluation, new version (this repo)"] = new
        rows["propose_from_evaluation, re-run (reused)"] = rerun
        assert [p["head"]["ref"] for p in forge.open_prs() if p["head"]["ref"].startswith("promote/")] == \
            [promotion_branch(v)], "older proposals should have been superseded"
    finally:
        forge.stop()
        servers.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'step':52}{'median s':>10}{'max s':>10}   (runs: {args.runs})")
    for name, values in rows.items():
        print(f"{name:52}{statistics.median(values):10.2f}{max(values):10.2f}")
    worst = statistics.median(rows["propose_from_evaluation, new version (this repo)"])
    print(f"\ntarget: new proposal against this repo <= 5 s: {worst:.2f} s  {'ok' if worst <= 5 else 'MISSED'}")
    return 0 if worst <= 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
