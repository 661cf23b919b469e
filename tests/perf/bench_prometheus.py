"""Memory of the lab's Prometheus scraping the real service (docs/cluster.md "Memory budget").

Starts a real MLflow server, registers a tiny model version, starts the service as the cluster
runs it (a prediction log, a live report on /metrics), then Prometheus with the lab's own
configuration (apps/monitoring/prometheus/prometheus.yml as kustomize renders it, both jobs:
the serving pods' DNS discovery replaced by the local service, which loopback DNS cannot
answer, its own target by its local port; the scrape interval shortened to pack more samples
into the run). While it runs, traffic hits the
service. Prints Prometheus' series count and its resident memory (now and peak) once a minute.

Needs the `prometheus` binary on PATH (Debian: `apt-get install prometheus`, 2.42; the lab pins
3.x, whose memory per series is no higher).

    uv run python tests/perf/bench_prometheus.py [--minutes 3] [--interval 1s]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.cluster.support import kustomize  # noqa: E402
from tests.serving.live_support import live_report, write_report  # noqa: E402
from tests.support import free_port, register_tiny_version, running_mlflow, start_service, stop_process  # noqa: E402


def lab_config(service_port: int, own_port: int, interval: str) -> dict:
    rendered = kustomize(REPO / "apps" / "monitoring")
    (cm,) = [o for o in rendered if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("prometheus-config-")]
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    config["global"]["scrape_interval"] = interval
    config["global"]["scrape_timeout"] = interval
    for job in config["scrape_configs"]:
        if "dns_sd_configs" in job:  # the serving pods
            del job["dns_sd_configs"]
            job["static_configs"] = [{"targets": [f"127.0.0.1:{service_port}"]}]
        else:  # Prometheus itself (localhost:9090 in the pod)
            job["static_configs"] = [{"targets": [f"127.0.0.1:{own_port}"]}]
    return config


def memory_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def series(port: int) -> int:
    body = httpx.get(f"http://127.0.0.1:{port}/api/v1/status/tsdb", timeout=10).json()
    return int(body["data"]["headStats"]["numSeries"])


def traffic(base: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.is_set():
            client.get("/predictionForTomorrow")
            client.get("/metrics")
            stop.wait(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--interval", default="1s", help="scrape interval (the lab: 15s)")
    args = parser.parse_args()
    binary = shutil.which("prometheus")
    if binary is None:
        sys.exit("error: no `prometheus` on PATH (Debian: apt-get install prometheus)")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    root = Path(tempfile.mkdtemp(prefix="bench-prometheus-"))
    from ml.tracking import Tracker

    with running_mlflow(root / "mlflow") as uri:
        model_version, _ = register_tiny_version(uri, Tracker(uri).experiment_id("bench"))
        log = f"sqlite:///{root / 'predictions.db'}"
        write_report(log, live_report(model_version, 30))
        with start_service(root / "svc", uri, model_version, wait_for="/readyz", PRIMER_PREDICTION_LOG=log) as svc:
            port = free_port()
            config = lab_config(int(svc.url.rsplit(":", 1)[1]), port, args.interval)
            (root / "prometheus.yml").write_text(yaml.safe_dump(config))
            # The lab's flags (apps/monitoring/prometheus.yaml), paths and port made local.
            proc = subprocess.Popen(
                [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
                 "--storage.tsdb.retention.time=7d", "--storage.tsdb.retention.size=512MB",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=open(root / "prometheus.log", "wb"))
            stop = threading.Event()
            worker = threading.Thread(target=traffic, args=(svc.url, stop), daemon=True)
            worker.start()
            rows = []
            try:
                start = time.monotonic()
                while (elapsed := time.monotonic() - start) < args.minutes * 60:
                    time.sleep(min(60.0, args.minutes * 60 - elapsed))
                    rss, peak = memory_kib(proc.pid)
                    rows.append((time.monotonic() - start, series(port), rss / 1024, peak / 1024))
            finally:
                stop.set()
                stop_process(proc)
    print(f"{version}, scrape interval {args.interval}, {args.minutes:g} min, the service under traffic")
    print(f"{'minute':>7} {'series':>7} {'RSS MiB':>8} {'peak MiB':>9}")
    for seconds, n, rss, peak in rows:
        print(f"{seconds / 60:7.1f} {n:7d} {rss:8.1f} {peak:9.1f}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
