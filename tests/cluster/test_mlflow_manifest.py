"""Run the MLflow container of apps/mlflow for real: the exact command, args and
env of the rendered Deployment, against a real PostgreSQL (the Service name
`postgres` swapped for 127.0.0.1, the PVC for a temp dir). Proves the backend URI
assembled from the Secret keys works with psycopg 3 and that --allowed-hosts
admits the in-cluster and NodePort names while rejecting others."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from contract import names
from contract.ui import ML_VIEW
from tests.cluster.support import find, versions
from tests.support import REPO_ROOT, console_script, free_port, stop_process, wait_http

SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion of env values and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


@contextmanager
def _run_manifest_mlflow(apps, postgres, root: Path, db: str, rewrite: Callable[[str, int], str] = lambda arg, port: arg
                         ) -> Iterator[tuple[int, Path, Path]]:
    """The Deployment's container as a local process; ``rewrite(arg, port)`` may substitute names in its args."""
    container = find(apps["apps/mlflow"], "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
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
        args.append(rewrite(arg, port))
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


@pytest.fixture(scope="module")
def mlflow_from_manifest(apps, postgres, tmp_path_factory):
    with _run_manifest_mlflow(apps, postgres, tmp_path_factory.mktemp("mlflow-manifest"), "mlflow_manifest") as running:
        yield running


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


# The lab's address, as a browser reaches the NodePort. The test never opens the private IP:
# a reserved name stands in for it, and Chromium maps that name (and only it) to loopback.
LAB_NAME = "lab.primer.test"


def _as_lab_name(arg: str, port: int) -> str:
    """The manifest's flags with the lab's node IPs and NodePort replaced by LAB_NAME and the local port."""
    node_port = versions()["MLFLOW_NODE_PORT"]
    return re.sub(r"192\.168\.56\.(?:\*|\d+):" + node_port, f"{LAB_NAME}:{port}", arg)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by .ci/run")
def test_the_lab_mlflow_ui_shows_runs_in_a_browser(apps, postgres, tmp_path: Path) -> None:
    """The experiment page as a lab user opens it (http://<worker>:30500): its runs are listed.

    The UI asks for runs with a cross-origin-checked POST (/ajax-api/.../runs/search); a server
    that does not allow the NodePort origin answers 403 and the page shows no runs.
    """
    from mlflow import MlflowClient

    from tests.browser import Browser

    with _run_manifest_mlflow(apps, postgres, tmp_path, "mlflow_lab_ui", _as_lab_name) as (port, _, log):
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        experiment = client.create_experiment("spy-direction")
        run_name = client.create_run(experiment, run_name="train-2024-06-28").info.run_name
        url = f"http://{LAB_NAME}:{port}/#/experiments/{experiment}/runs?{ML_VIEW}"
        with Browser(resolver_rules=f"MAP {LAB_NAME} 127.0.0.1, MAP * ~NOTFOUND") as browser:
            page = browser.new_page()
            page.goto(url)
            try:
                page.wait_for_text(run_name, timeout=30)
            except TimeoutError:
                refused = [(s, u) for s, u in page.responses() if s >= 400]
                pytest.fail(f"no runs shown at {url}; refused: {refused}\n{log.read_text(errors='replace')[-1500:]}")
            finally:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(SCREENSHOTS / "lab-mlflow-runs.png")
            assert [(s, u) for s, u in page.responses() if s == 403] == []
