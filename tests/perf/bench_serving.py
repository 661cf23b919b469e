"""Serving benchmark: our BentoML service vs `mlflow models serve`, same machine, same model version.

    /work/venv/bin/python tests/perf/bench_serving.py [--duration 10] [--connections 8]

What it does (all local, nothing mocked):
  1. starts an MLflow server (SQLite, temp dir) and registers a version with the real
     pipeline (`primer train --source synthetic --no-promote`);
  2. pins it and starts `bentoml serve bentos.service:PrimerService`, timing process
     start -> /readyz 200 (cold start), and measures the RSS of its process tree;
  3. starts `mlflow models serve -m models:/spy-direction/N --env-manager local`;
  4. loads each target for --duration seconds with --connections connections:
       (a) our GET /predictionForTomorrow
       (b) mlflow's POST /invocations with the same feature row
       (c) our /livez (the framework's ceiling)
     with wrk (Debian package `wrk`) if installed, else a bounded asyncio httpx loop;
     (a and c alternate for --rounds rounds and are averaged: the machine may be shared);
  5. prints req/s, p50, p99, the ratios a/c and a/b, and the targets.

Targets on a 2-core machine: a >= 70% of c, a >= 5x b, p99(a) <= 50 ms,
cold start <= 6 s, RSS <= 500 MB. The machine may be shared: rerun when quiet.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from contract.names import MODEL_NAME  # noqa: E402
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run (default 10)")
    ap.add_argument("--connections", type=int, default=8, help="concurrent connections (default 8)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (c, a); numbers are means (default 2)")
    ap.add_argument("--tool", choices=("auto", "wrk", "httpx"), default="auto")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args()
    tool = ("wrk" if shutil.which("wrk") else "httpx") if args.tool == "auto" else args.tool

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    servers = ExitStack()  # MLflow and our service
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true"}
    # `mlflow models serve` execs `uvicorn` from PATH: put this environment's bin first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        # 1. MLflow + a version trained by the real pipeline.
        env["MLFLOW_TRACKING_URI"] = uri = servers.enter_context(running_mlflow(tmp))
        version = train_version(uri, write_pin_text(tmp / "model-version.yaml", None), "synthetic", base_env=env)

        # 2. Our service (`bentoml serve`, synthetic data, the version pinned): cold start to ready, RSS.
        t0 = time.perf_counter()
        svc = servers.enter_context(start_service(tmp / "serve", uri, version, base_env=env))
        ours, ours_url = svc.proc, svc.url
        while True:
            if ours.poll() is not None:
                raise RuntimeError(f"service exited: {svc.log_tail(3000)}")
            try:
                if httpx.get(f"{ours_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > 120:
                raise RuntimeError("service not ready after 120 s")
            time.sleep(0.05)
        cold = time.perf_counter() - t0
        time.sleep(1.0)
        rss_idle = tree_rss_mb(ours.pid)

        # 3. mlflow models serve for the same version, same feature row.
        from bentos.runtime import LOOKBACK_DAYS
        from ml.data import load_prices
        from ml.features import FEATURE_COLUMNS, tomorrow_row

        today = datetime.now(UTC).date()
        row, as_of = tomorrow_row(load_prices("synthetic", start=today - timedelta(days=LOOKBACK_DAYS), end=today))
        body = {"dataframe_split": {"columns": list(FEATURE_COLUMNS), "data": row.astype(float).values.tolist()}}
        bport = free_port()
        with open(tmp / "mlflow-serve.log", "ab") as log:
            theirs = subprocess.Popen(
                [console_script("mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}/{version}",
                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(bport)],
                cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        procs.append(theirs)
        wait_http(f"http://127.0.0.1:{bport}/ping", 120, theirs, tmp / "mlflow-serve.log")
        # Same answer from both before timing anything.
        a_body = httpx.get(f"{ours_url}/predictionForTomorrow").json()
        b_body = httpx.post(f"http://127.0.0.1:{bport}/invocations", json=body).json()
        b_conf = b_body["predictions"][0]
        b_conf = b_conf[-1] if isinstance(b_conf, list) else b_conf.get("1", b_conf)
        print(f"model v{version}, as_of {as_of}: ours P(up)={a_body['confidence']:.6f}, mlflow pyfunc={b_conf}")

        # 4. Load.
        targets = [
            ("c", "our /livez", f"{ours_url}/livez", None),
            ("a", "our GET /predictionForTomorrow", f"{ours_url}/predictionForTomorrow?threshold=0.5", None),
            ("b", "mlflow POST /invocations", f"http://127.0.0.1:{bport}/invocations", body),
        ]
        runs: dict[str, list[Result]] = {"a": [], "b": [], "c": []}
        for rnd in range(args.rounds):
            # a and c alternate every round (a shared machine drifts); b is 10x+ slower, once is enough.
            for key, name, url, payload in targets:
                if key == "b" and rnd > 0:
                    continue
                res = (run_wrk(name, url, args.duration, args.connections, payload, tmp) if tool == "wrk"
                       else run_httpx(name, url, args.duration, args.connections, payload))
                runs[key].append(res)
        rss_loaded = tree_rss_mb(ours.pid)
        mean = lambda rs, f: sum(getattr(r, f) for r in rs) / len(rs)  # noqa: E731
        results = {
            k: Result(rs[0].name, mean(rs, "rps"), mean(rs, "p50_ms"), mean(rs, "p99_ms"),
                      sum(r.errors for r in rs), rs[0].tool)
            for k, rs in runs.items()
        }

        # 5. Report.
        print(f"\nload: {tool}, {args.connections} connections, {args.duration} s each; "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}\n")
        print(f"{'':3}{'target':36}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}   (per round)")
        for key in ("a", "b", "c"):
            r = results[key]
            rounds = ", ".join(f"{x.rps:.0f}/{x.p99_ms:.1f}" for x in runs[key])
            print(f"({key}){r.name:35}{r.rps:10.0f}{r.p50_ms:10.2f}{r.p99_ms:10.2f}{r.errors:8d}   req/s/p99: {rounds}")
        a, b, c = results["a"], results["b"], results["c"]
        checks = [
            ("a / c (>= 0.70)", f"{a.rps / c.rps:.2f}", a.rps / c.rps >= 0.70),
            ("a / b (>= 5.0)", f"{a.rps / b.rps:.1f}x", a.rps / b.rps >= 5.0),
            ("p99(a) ms (<= 50)", f"{a.p99_ms:.1f}", a.p99_ms <= 50),
            ("cold start to ready s (<= 6)", f"{cold:.2f}", cold <= 6),
            ("RSS service tree MB, idle (<= 500)", f"{rss_idle:.0f}", rss_idle <= 500),
            ("RSS service tree MB, after load", f"{rss_loaded:.0f}", rss_loaded <= 500),
            ("errors (a, b, c)", f"{a.errors}, {b.errors}, {c.errors}", a.errors + b.errors + c.errors == 0),
        ]
        print()
        for label, value, ok in checks:
            print(f"  {label:38}{value:>12}   {'ok' if ok else 'MISSED'}")
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
