"""Soak with faults: mixed traffic at 32 connections while the pin swaps, breaks and MLflow dies.

    uv run python tests/perf/soak_serving.py [--minutes 10] [--connections 32]

Everything is real and local: an MLflow server (SQLite), two versions registered by the
real pipeline, and the service started as `primer serve` starts it. For --minutes the
load mixes, per request (32 concurrent clients, asyncio + httpx):

  valid    GET /predictionForTomorrow (plain and ?threshold=), GET /model,
           POST /predict with 1 to 1,000 real feature rows
  invalid  POST /predict with hostile bodies (strings, bools, NaN, extra fields, no rows,
           1,001 rows, not JSON), GET with a repeated or out-of-range threshold
  random   GET and POST on random paths

and meanwhile: the pin swaps between the two versions every 30 s; once (at 1/3) a garbage
pin is written, restored at the next swap; once (at 1/2) MLflow is killed (SIGKILL) and
restarted 20 s later on the same port and data.

It prints one row per minute: requests, valid errors by status and socket errors, p50/p99
of valid requests, RSS of the service's process tree, the size of /metrics; then the totals
and the targets (issue 12): 0 5xx and 0 socket errors on valid requests; RSS and /metrics
size flat (the last minute at most 10 % above the second, the first being warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import string
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.perf.bench_serving import feature_rows, tree_rss_mb  # noqa: E402
from tests.support import (  # noqa: E402
    free_port,
    start_mlflow_in,
    start_service,
    stop_process,
    train_version,
    write_pin_text,
)

HOSTILE_BODIES: list[bytes] = [
    b'{"rows": [{"ret_1": "0.01"}]}', b'{"rows": [{"ret_1": true}]}', b'{"rows": []}', b'{"rows": {}}',
    b'{"rows": [{"ret_1": NaN}]}', b"not json", b'{"rows": [', b"[]", b'{"rows": null}', b"\xff\xfe\x00",
]
BAD_QUERIES = ["?threshold=2", "?threshold=abc", "?threshold=0.3&threshold=0.4", "?threshold=nan", "?threshold="]


@dataclass
class Minute:
    requests: Counter[str] = field(default_factory=Counter)  # by kind
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (kind, status); 0 = socket error
    valid_ms: list[float] = field(default_factory=list)
    rss_mb: float = 0.0
    metrics_kb: float = 0.0


def _random_path(rnd: random.Random) -> str:
    return "/" + "/".join("".join(rnd.choices(string.ascii_letters + "%._-~", k=rnd.randint(1, 12)))
                          for _ in range(rnd.randint(1, 4)))


def _pick(rnd: random.Random, rows: list[dict]) -> tuple[str, str, str, bytes | None]:
    """(kind, method, path, body) for one request."""
    roll = rnd.random()
    if roll < 0.35:
        return "valid", "GET", rnd.choice(["/predictionForTomorrow", "/predictionForTomorrow?threshold=0.42",
                                            "/model"]), None
    if roll < 0.65:
        n = rnd.choice([1, 1, 1, 10, 100, rnd.randint(1, 1000)])
        return "valid", "POST", "/predict", json.dumps({"rows": rnd.sample(rows, n)}).encode()
    if roll < 0.85:
        if rnd.random() < 0.6:
            return "invalid", "POST", "/predict", rnd.choice([*HOSTILE_BODIES, json.dumps({"rows": rows[:1] * 1001})
                                                               .encode()])
        return "invalid", "GET", "/predictionForTomorrow" + rnd.choice(BAD_QUERIES), None
    return "random", rnd.choice(["GET", "POST"]), _random_path(rnd), b"{}"


async def _client(url: str, rows: list[dict], deadline: float, seed: int, minutes: dict[int, Minute],
                  started: float, limits: httpx.Limits) -> None:
    rnd = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        while time.monotonic() < deadline:
            kind, method, path, body = _pick(rnd, rows)
            t0 = time.monotonic()
            try:
                r = await client.request(method, path, content=body,
                                         headers={"content-type": "application/json"} if body else None)
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            minute = minutes[int((t0 - started) // 60)]
            minute.requests[kind] += 1
            minute.statuses[(kind, status)] += 1
            if kind == "valid":
                minute.valid_ms.append((time.monotonic() - t0) * 1e3)


@dataclass
class Faults:
    pin: Path
    versions: tuple[int, int]
    mlflow: dict  # {"proc", "port", "root"}
    log: list[str] = field(default_factory=list)


async def _faults(f: Faults, started: float, duration: float) -> None:
    swap, i = 30.0, 0
    broke = killed = False
    while (now := time.monotonic() - started) < duration:
        await asyncio.sleep(1.0)
        if now >= swap * (i + 1):
            i += 1
            write_pin_text(f.pin, f.versions[i % 2])
            f.log.append(f"{now:6.0f}s pin -> v{f.versions[i % 2]}")
        if not broke and now >= duration / 3:
            broke = True
            f.pin.write_text("model: spy-direction\nversion: [garbage\n")
            f.log.append(f"{now:6.0f}s garbage pin written")
        if not killed and now >= duration / 2:
            killed = True
            os.killpg(f.mlflow["proc"].pid, signal.SIGKILL)
            f.log.append(f"{now:6.0f}s MLflow killed")
            await asyncio.sleep(20)
            f.mlflow["proc"] = await asyncio.to_thread(start_mlflow_in, f.mlflow["root"], f.mlflow["port"])
            f.log.append(f"{time.monotonic() - started:6.0f}s MLflow back")


async def _sampler(url: str, pid: int, started: float, duration: float, minutes: dict[int, Minute]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while (now := time.monotonic() - started) < duration:
            minute = minutes[int(now // 60)]
            minute.rss_mb = max(minute.rss_mb, tree_rss_mb(pid))
            try:
                minute.metrics_kb = max(minute.metrics_kb, len((await client.get("/metrics")).content) / 1024)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(5)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def report(minutes: dict[int, Minute], faults: Faults) -> bool:
    print(f"\n{'min':>3}{'requests':>10}{'valid':>8}{'5xx(valid)':>11}{'sock':>6}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'RSS MB':>8}{'/metrics KB':>12}   statuses (kind:status=count)")
    total: Counter[tuple[str, int]] = Counter()
    for k in sorted(minutes):
        m = minutes[k]
        total.update(m.statuses)
        v5 = sum(c for (kind, s), c in m.statuses.items() if kind == "valid" and s >= 500)
        sock = sum(c for (kind, s), c in m.statuses.items() if kind == "valid" and s == 0)
        detail = " ".join(f"{kind[0]}:{s}={c}" for (kind, s), c in sorted(m.statuses.items()))
        print(f"{k + 1:>3}{sum(m.requests.values()):>10}{m.requests['valid']:>8}{v5:>11}{sock:>6}"
              f"{_pct(m.valid_ms, .5):>8.1f}{_pct(m.valid_ms, .99):>8.1f}{m.rss_mb:>8.0f}{m.metrics_kb:>12.1f}"
              f"   {detail}")
    print("\nfaults:\n  " + "\n  ".join(faults.log))
    valid_bad = {s: c for (kind, s), c in total.items() if kind == "valid" and (s >= 500 or s == 0)}
    by_kind: dict[str, Counter[int]] = defaultdict(Counter)
    for (kind, s), c in total.items():
        by_kind[kind][s] += c
    print("\ntotals by kind and status: " + "; ".join(f"{k}: {dict(sorted(v.items()))}" for k, v in by_kind.items()))
    keys = sorted(minutes)
    full = [k for k in keys if minutes[k].requests and k < keys[-1]] or keys  # the last minute may be partial
    base, last = minutes[full[1] if len(full) > 1 else full[0]], minutes[full[-1]]
    rss_growth = last.rss_mb / base.rss_mb - 1
    metrics_growth = last.metrics_kb / base.metrics_kb - 1 if base.metrics_kb else float("nan")
    checks = [
        ("5xx and socket errors on valid requests (0)", str(sum(valid_bad.values())), not valid_bad),
        ("RSS growth after warm-up (<= 10 %)", f"{rss_growth:+.1%}", rss_growth <= 0.10),
        ("/metrics size growth after warm-up (<= 10 %)", f"{metrics_growth:+.1%}", metrics_growth <= 0.10),
    ]
    print()
    for label, value, ok in checks:
        print(f"  {label:48}{value:>10}   {'ok' if ok else 'MISSED'}")
    return all(ok for *_, ok in checks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10, help="duration (default 10)")
    ap.add_argument("--connections", type=int, default=32, help="concurrent clients (default 32)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args()
    duration = args.minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="soak-serving-"))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "true"}
    stack = ExitStack()
    mlflow = {"root": tmp / "mlflow", "port": free_port()}
    try:
        mlflow["proc"] = start_mlflow_in(mlflow["root"], mlflow["port"])
        stack.callback(lambda: stop_process(mlflow["proc"]))
        uri = env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{mlflow['port']}"
        pin = write_pin_text(tmp / "train-pin.yaml", None)
        versions = (train_version(uri, pin, "synthetic:11", base_env=env),
                    train_version(uri, pin, "synthetic:23", base_env=env))
        svc = stack.enter_context(start_service(tmp / "serve", uri, versions[0], base_env=env, primer_serve=True,
                                                wait_for="/readyz"))
        rows = feature_rows(1000)
        print(f"service {svc.url} (pid {svc.proc.pid}), versions {versions}, {args.connections} clients, "
              f"{args.minutes:g} min; log {svc.log}")
        faults = Faults(svc.pin, versions, mlflow)
        minutes: dict[int, Minute] = defaultdict(Minute)

        async def run() -> None:
            started = time.monotonic()
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            await asyncio.gather(
                *(_client(svc.url, rows, started + duration, seed, minutes, started, limits)
                  for seed in range(args.connections)),
                _faults(faults, started, duration),
                _sampler(svc.url, svc.proc.pid, started, duration, minutes),
            )

        asyncio.run(run())
        ok = report(minutes, faults)
        return 0 if ok else 1
    finally:
        stack.close()
        if args.keep:
            print(f"\nlogs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
