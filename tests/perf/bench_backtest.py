"""Benchmark: `primer backtest` over one year of weekly anchors on the packaged synthetic data.

Runs the real CLI as a subprocess with an empty fold cache (a fresh PRIMER_STATE_DIR) and the
packaged grid and policy, then prints the wall time, the decisions, the promotions and the
served track record it reported. Target: <= 5 minutes on a 2-core machine.

    python tests/perf/bench_backtest.py [--from 2024-07-01 --to 2025-06-30 --every 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support import scrubbed_env  # noqa: E402

TARGET_SECONDS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="start", default="2024-07-01")
    parser.add_argument("--to", dest="end", default="2025-06-30")
    parser.add_argument("--every", default="5")
    parser.add_argument("--source", default="synthetic")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        env = scrubbed_env(PRIMER_STATE_DIR=str(Path(tmp) / "state"))
        primer = Path(sys.executable).parent / "primer"
        cmd = [str(primer) if primer.exists() else "primer", "backtest", "--source", args.source, "--from",
               args.start, "--to", args.end, "--every", args.every, "--out", str(Path(tmp) / "report")]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"primer backtest failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        written = sorted(p.name for p in (Path(tmp) / "report").iterdir())
    summary = out.stdout[out.stdout.index("\n\n") + 2:] if "\n\n" in out.stdout else out.stdout
    print(f"primer backtest --source {args.source} --from {args.start} --to {args.end} --every {args.every}")
    print(f"(load average {os.getloadavg()[0]:.1f}; written: {', '.join(written)})\n")
    print(summary.strip())
    verdict = "OK" if wall <= TARGET_SECONDS else "OVER TARGET"
    print(f"\nwall {wall:.1f}s; target {TARGET_SECONDS:.0f}s: {verdict}")


if __name__ == "__main__":
    main()
