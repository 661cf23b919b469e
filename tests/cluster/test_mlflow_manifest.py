"""Run the MLflow container of apps/mlflow for real: the exact command, args and
env of the rendered Deployment, against a real PostgreSQL (the Service name
`postgres` swapped for 127.0.0.1, the PVC for a temp dir). Proves the backend URI
assembled from the Secret keys works with psycopg 3 and that --allowed-hosts
admits the in-cluster and NodePort names while rejecting others."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from contract import names
from tests.cluster.support import find
from tests.support import console_script, free_port, stop_process, wait_http


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion of env values and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


@pytest.fixture(scope="module")
def mlflow_from_manifest(apps, postgres, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-manifest")
    container = find(apps["apps/mlflow"], "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    db = "mlflow_manifest"
    postgres.createdb(db)
    port = free_port()
    # The bootstrap Secret's keys (trust auth locally: the password is not checked).
    secret = {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "unused-locally", "POSTGRES_DB": db}
    env: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            env[item["name"]] = secret[item["valueFrom"]["secretKeyRef"]["key"]]
        else:
            env[item["name"]] = _expand(item["value"], env)
    env["MLFLOW_BACKEND_STORE_URI"] = env["MLFLOW_BACKEND_STORE_URI"].replace(
        "@postgres:5432/", f"@127.0.0.1:{postgres.port}/")
    home = root / "home"
    home.mkdir()
    env["HOME"] = str(home)
    artifacts = root / "mlartifacts"
    artifacts.mkdir()
    args = []
    for arg in container["args"]:
        arg = _expand(arg, env)
        arg = arg.replace("=/mlartifacts", f"={artifacts}")
        arg = arg.replace("--host=0.0.0.0", "--host=127.0.0.1")  # tests stay on loopback
        arg = arg.replace(f"--port={names.MLFLOW_PORT}", f"--port={port}")
        arg = re.sub(r"^--workers=\d+$", "--workers=1", arg)  # same server, less CPU on a shared CI box
        args.append(arg)
    cmd = [console_script(container["command"][0]), *container["command"][1:], *args]
    log = root / "mlflow.log"
    base_env = {k: v for k, v in os.environ.items() if k in {"PATH", "LANG", "LC_ALL"}}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env={**base_env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=root)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, proc, log)
        yield port, artifacts, log
    finally:
        stop_process(proc)


def _get(port: int, host: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                     params={"max_results": 5}, headers={"Host": host}, timeout=10)


def test_manifest_mlflow_serves_from_postgres(mlflow_from_manifest) -> None:
    port, _, log = mlflow_from_manifest
    r = _get(port, f"mlflow.mlflow.svc.cluster.local:{names.MLFLOW_PORT}")
    assert r.status_code == 200, (r.status_code, r.text, log.read_text()[-2000:])
    assert "Default" in {e["name"] for e in r.json()["experiments"]}  # schema created in PostgreSQL


@pytest.mark.parametrize("host", ["mlflow:5000", "mlflow.mlflow:5000", "mlflow.mlflow.svc:5000",
                                  "192.168.56.21:30500", "192.168.56.10:30500"])
def test_manifest_mlflow_allows_cluster_and_nodeport_hosts(mlflow_from_manifest, host: str) -> None:
    assert _get(mlflow_from_manifest[0], host).status_code == 200


@pytest.mark.parametrize("host", ["evil.example.com", "192.168.56.21:5000", "mlflow.other-namespace:5000"])
def test_manifest_mlflow_rejects_other_hosts(mlflow_from_manifest, host: str) -> None:
    r = _get(mlflow_from_manifest[0], host)
    assert r.status_code in (400, 403), (host, r.status_code)


def test_manifest_mlflow_proxies_artifacts_to_the_volume(mlflow_from_manifest) -> None:
    port, artifacts, _ = mlflow_from_manifest
    headers = {"Host": f"mlflow.mlflow.svc.cluster.local:{names.MLFLOW_PORT}"}
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow-artifacts/artifacts/probe/hello.txt"
    assert httpx.put(url, content=b"hi", headers=headers, timeout=10).status_code == 200
    assert (Path(artifacts) / "probe" / "hello.txt").read_bytes() == b"hi"


def test_manifest_mlflow_runs_without_the_job_runner(mlflow_from_manifest) -> None:
    # MLflow 3 with a database backend starts huey job consumers by default: a dozen extra
    # processes that blow the container's memory limit. The manifest turns them off.
    _port, _artifacts, log = mlflow_from_manifest
    text = log.read_text(errors="replace")
    assert "mlflow.server.jobs" not in text, text[-2000:]  # its startup log lines
