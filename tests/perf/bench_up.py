"""Benchmark: time from `primer up --offline` to the first 200 from the API.

Runs N times (default 3), each in a fresh copy of this repository with fresh
state and free ports, then `primer down`. Prints a table and the median.
Target on a 2-core machine: median <= 60 s.

    python tests/perf/bench_up.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.repo_copy import copy_repo  # noqa: E402
from tests.support import console_script, free_port, scrubbed_env  # noqa: E402

TARGET_S = 60.0


def one_run(workdir: Path) -> tuple[float, float]:
    repo = copy_repo(REPO_ROOT, workdir / "primer")
    mlflow_port, port = free_port(), free_port()
    env = scrubbed_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}")
    url = f"http://127.0.0.1:{port}/predictionForTomorrow?threshold=0.5"
    start = time.monotonic()
    proc = subprocess.Popen([console_script("primer"), "up", "--offline",
                             "--mlflow-port", str(mlflow_port), "--port", str(port)],
                            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_200 = None
    try:
        while time.monotonic() - start < 300:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    first_200 = time.monotonic() - start
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() not in (None, 0):
                raise SystemExit(f"primer up failed with {proc.returncode}")
            time.sleep(0.1)
        proc.wait(timeout=300)
        up_done = time.monotonic() - start
    finally:
        subprocess.run([console_script("primer"), "down"], cwd=repo, env=env, capture_output=True)
    if first_200 is None:
        raise SystemExit("no 200 within 300 s")
    return first_200, up_done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="primer-bench-up-") as tmp:
            first, done = one_run(Path(tmp))
        rows.append((i + 1, first, done))
        print(f"run {i + 1}: first 200 after {first:.1f} s", file=sys.stderr)
    print(f"{'run':>4} | {'first 200 (s)':>14} | {'up exited (s)':>14}")
    print(f"{'-' * 4}-+-{'-' * 14}-+-{'-' * 14}")
    for run, first, done in rows:
        print(f"{run:>4} | {first:>14.1f} | {done:>14.1f}")
    median = statistics.median(r[1] for r in rows)
    verdict = "meets" if median <= TARGET_S else "misses"
    print(f"\nmedian time to first 200: {median:.1f} s ({verdict} the {TARGET_S:.0f} s target)")


if __name__ == "__main__":
    main()
