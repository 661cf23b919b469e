"""Serving benchmark: our BentoML service vs `mlflow models serve`, same machine, same model version.

    uv run python tests/perf/bench_serving.py [--duration 10] [--rounds 1]

Everything is local and real: an MLflow server (SQLite, temp dir), a version registered by
the real pipeline (`primer train --source synthetic --no-promote`), our service started the
way `primer serve` and the container start it, and `mlflow models serve` on the same version.

Each row of the table compares like with like, and says what it compares:

  cached answer   our GET /predictionForTomorrow answers from the prediction computed
                  when the pin or the data changed: no inference per request. Its peer
                  equivalent is MLflow's GET /ping (no inference either): both are each
                  server's floor, not model speed.
  inference       our POST /predict vs MLflow's POST /invocations: the same model, the
                  same feature rows (1 or 100 per request), predict_proba per request.

Targets (issue 12, 2-core machine): inference with 1 row at 32 connections >= 3x the peer's
req/s; p99 of our inference with 1 row at 8 connections <= 30 ms; cold start (process start
-> /readyz 200) <= 4 s; RSS of the whole service process tree <= 400 MB. The load generator
(wrk) shares the two cores with the servers: rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from contract.names import MODEL_NAME  # noqa: E402
from tests.serving.live_support import live_report, write_report  # noqa: E402
from tests.support import (  # noqa: E402
    console_script,
    free_port,
    running_mlflow,
    start_service,
    stop_process,
    train_version,
    wait_http,
    write_pin_text,
)


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"cannot parse latency {text!r}")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def run_wrk(name: str, url: str, duration: int, connections: int, body: dict | None, tmp: Path) -> Result:
    cmd = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "--latency", "--timeout", "5s"]
    if body is not None:
        script = tmp / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    return Result(name, rps, p50, p99, errors, "wrk")


def run_httpx(name: str, url: str, duration: int, connections: int, body: dict | None) -> Result:
    """Fallback load generator: `connections` concurrent clients in one asyncio loop (slower than wrk)."""

    async def main() -> Result:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + duration
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=5) as client:

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        r = await (client.post(url, json=body) if body is not None else client.get(url))
                        if r.status_code >= 300:
                            errors += 1
                    except httpx.HTTPError:
                        errors += 1
                    latencies.append((time.perf_counter() - t0) * 1e3)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - t0
        latencies.sort()
        pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
        return Result(name, len(latencies) / elapsed, pick(0.5), pick(0.99), errors, "httpx")

    return asyncio.run(main())


def tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


@dataclass(frozen=True)
class Case:
    key: str
    what: str
    ours: tuple[str, str, dict | None]  # (label, path, JSON body)
    peer: tuple[str, str, dict | None]
    connections: int


def feature_rows(n: int) -> list[dict[str, float]]:
    """``n`` real feature rows from the synthetic source (the last n days), as JSON objects."""
    from ml.data import load_prices
    from ml.features import FEATURE_COLUMNS, build_features

    frame = build_features(load_prices("synthetic"))[list(FEATURE_COLUMNS)].tail(n)
    return [{c: float(v) for c, v in row.items()} for _, row in frame.iterrows()]


def ours(rows: list[dict]) -> dict:
    return {"rows": rows}


def peer(rows: list[dict]) -> dict:
    cols = list(rows[0])
    return {"dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in rows]}}


def cases(rows1: list[dict], rows100: list[dict]) -> list[Case]:
    return [
        Case("cached-8", "cached answer, 8 conn", ("GET /predictionForTomorrow", "/predictionForTomorrow", None),
             ("GET /ping", "/ping", None), 8),
        Case("infer1-8", "inference 1 row, 8 conn", ("POST /predict", "/predict", ours(rows1)),
             ("POST /invocations", "/invocations", peer(rows1)), 8),
        Case("infer1-32", "inference 1 row, 32 conn", ("POST /predict", "/predict", ours(rows1)),
             ("POST /invocations", "/invocations", peer(rows1)), 32),
        Case("infer100-8", "inference 100 rows, 8 conn", ("POST /predict", "/predict", ours(rows100)),
             ("POST /invocations", "/invocations", peer(rows100)), 8),
    ]


def wait_ready(proc: subprocess.Popen, url: str, started: float, limit: float = 120) -> float:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if time.perf_counter() - started > limit:
            raise RuntimeError(f"service not ready after {limit} s")
        time.sleep(0.02)


def same_answers(ours_url: str, peer_url: str, rows: list[dict]) -> None:
    """Both servers give the same P(up) for the same rows before anything is timed."""
    a = httpx.post(f"{ours_url}/predict", json=ours(rows)).json()
    b = httpx.post(f"{peer_url}/invocations", json=peer(rows)).json()["predictions"]
    b = [p[-1] if isinstance(p, list) else p.get("1", p) for p in b]
    if any(abs(x - y) > 1e-9 for x, y in zip(a, b, strict=True)):
        raise RuntimeError(f"the two servers disagree: {a[:3]} vs {b[:3]}")


def load(tool: str, name: str, url: str, duration: int, connections: int, body: dict | None, tmp: Path) -> Result:
    return (run_wrk(name, url, duration, connections, body, tmp) if tool == "wrk"
            else run_httpx(name, url, duration, connections, body))


def report(results: dict[str, tuple[Result, Result]], table: list[Case], cold: float, rss: tuple[float, float],
           header: str) -> None:
    print(f"\n{header}\n")
    print(f"{'what':30}{'server':28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'ours/peer':>11}")
    for case in table:
        ours, peer = results[case.key]
        for i, r in enumerate((ours, peer)):
            ratio = f"{ours.rps / peer.rps:10.2f}x" if i == 0 else ""
            print(f"{case.what if i == 0 else '':30}{('ours ' if i == 0 else 'mlflow ') + r.name:28}"
                  f"{r.rps:9.0f}{r.p50_ms:9.2f}{r.p99_ms:9.2f}{r.errors:8d}{ratio:>11}")
    i1_32, i1_8 = results["infer1-32"], results["infer1-8"]
    errors = sum(r.errors for pair in results.values() for r in pair)
    checks = [
        ("inference 1 row @32: ours/peer req/s (>= 3)", f"{i1_32[0].rps / i1_32[1].rps:.2f}x",
         i1_32[0].rps / i1_32[1].rps >= 3),
        ("inference 1 row @8: our p99 ms (<= 30)", f"{i1_8[0].p99_ms:.1f}", i1_8[0].p99_ms <= 30),
        ("cold start to /readyz s (<= 4)", f"{cold:.2f}", cold <= 4),
        ("RSS service tree MB, idle (<= 400)", f"{rss[0]:.0f}", rss[0] <= 400),
        ("RSS service tree MB, after load (<= 400)", f"{rss[1]:.0f}", rss[1] <= 400),
        ("errors (all runs)", str(errors), errors == 0),
    ]
    print()
    for label, value, ok in checks:
        print(f"  {label:46}{value:>10}   {'ok' if ok else 'MISSED'}")
    print("\nas markdown (README, docs/serving.md):\n")
    print("| what | ours | req/s | p99 ms | peer | req/s | p99 ms | ours/peer |\n|---|---|---|---|---|---|---|---|")
    for case in table:
        ours, peer = results[case.key]
        print(f"| {case.what} | {ours.name} | {ours.rps:,.0f} | {ours.p99_ms:.1f} | {peer.name} | {peer.rps:,.0f} | "
              f"{peer.p99_ms:.1f} | {ours.rps / peer.rps:.2f}x |")
    print(f"\ncold start to ready {cold:.1f} s; service process tree {rss[0]:.0f} MB idle, {rss[1]:.0f} MB after load")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run (default 10)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of every case, ours and peer alternating; "
                    "numbers are means (default 1)")
    ap.add_argument("--only", default="", help="comma-separated case keys (cached-8,infer1-8,infer1-32,infer100-8)")
    ap.add_argument("--tool", choices=("auto", "wrk", "httpx"), default="auto")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--no-log", action="store_true", help="our service without a prediction log or live report "
                    "(as before issue 13), to compare")
    args = ap.parse_args()
    tool = ("wrk" if shutil.which("wrk") else "httpx") if args.tool == "auto" else args.tool

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    servers = ExitStack()  # MLflow and our service
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true"}
    # `mlflow models serve` execs `uvicorn` from PATH: put this environment's bin first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        env["MLFLOW_TRACKING_URI"] = uri = servers.enter_context(running_mlflow(tmp))
        version = train_version(uri, write_pin_text(tmp / "model-version.yaml", None), "synthetic", base_env=env)

        # Our service, started as `primer serve` starts it: cold start to ready, RSS of the process tree.
        # As in the cluster, it writes a prediction log and exports a live report from its database.
        log_url = "" if args.no_log else f"sqlite:///{tmp / 'predictions.db'}"
        if log_url:
            write_report(log_url, live_report(version, 60))
        t0 = time.perf_counter()
        svc = servers.enter_context(start_service(tmp / "serve", uri, version, base_env=env, primer_serve=True,
                                                  wait_for="/livez", PRIMER_PREDICTION_LOG=log_url,
                                                  PRIMER_LIVE_REFRESH_SECONDS="1"))
        cold = wait_ready(svc.proc, svc.url, t0)
        time.sleep(1.0)
        rss_idle = tree_rss_mb(svc.proc.pid)

        bport = free_port()
        with open(tmp / "mlflow-serve.log", "ab") as log:
            theirs = subprocess.Popen(
                [console_script("mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}/{version}",
                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(bport)],
                cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        procs.append(theirs)
        peer_url = f"http://127.0.0.1:{bport}"
        wait_http(f"{peer_url}/ping", 120, theirs, tmp / "mlflow-serve.log")

        rows100 = feature_rows(100)
        table = cases(rows100[-1:], rows100)
        if args.only:
            keep = set(args.only.split(","))
            table = [c for c in table if c.key in keep or c.key in ("infer1-32", "infer1-8")]
        same_answers(svc.url, peer_url, rows100)
        runs: dict[str, tuple[list[Result], list[Result]]] = {c.key: ([], []) for c in table}
        for _ in range(args.rounds):
            for case in table:
                for side, (label, path, body), base in ((0, case.ours, svc.url), (1, case.peer, peer_url)):
                    runs[case.key][side].append(
                        load(tool, label, base + path, args.duration, case.connections, body, tmp))
        rss_loaded = tree_rss_mb(svc.proc.pid)

        def mean(rs: list[Result]) -> Result:
            avg = lambda f: sum(getattr(r, f) for r in rs) / len(rs)  # noqa: E731
            return Result(rs[0].name, avg("rps"), avg("p50_ms"), avg("p99_ms"), sum(r.errors for r in rs), rs[0].tool)

        results = {k: (mean(o), mean(p)) for k, (o, p) in runs.items()}
        report(results, table, cold, (rss_idle, rss_loaded),
               f"model v{version}; {'no prediction log' if args.no_log else 'prediction log + live report'}; "
               f"load: {tool}, {args.duration} s per run, {args.rounds} round(s); "
               f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
        return 0
    finally:
        for p in reversed(procs):
            stop_process(p)
        servers.close()
        if args.keep:
            print(f"\nlogs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
