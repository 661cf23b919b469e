"""The loop the cluster runs, driven by the rendered manifests themselves.

Every container below is started as a local process with its manifest's exact command,
args and env: ConfigMaps and Secrets filled from the rendered objects or test values,
``$(VAR)`` expanded as Kubernetes does, Service DNS names mapped to local stand-ins, mount
paths mapped to folders holding what the volume would (a ConfigMap's files, a claim shared
between pods). Real parts: PostgreSQL, the MLflow container of apps/mlflow, git over HTTP
with a token (git's own http-backend), the bootstrap's seed steps (lib.sh). Stand-ins:
the forge API (tests/promotion/fakeforge.py) and the internet (`PRIMER_DATA_SOURCE`
yfinance becomes synthetic, the only value replaced).

The loop: apps/mlflow's PostSync Job creates the prediction log's database; the training
CronJob's job template (history download, `primer monitor`, then `primer train`) opens a pull
request; the admin merges it; apps/serving rendered *at the merged commit* carries the new pin;
the serving container started from that rendering serves the new version and records its
answer in the prediction log (PostgreSQL, through the URL platform.sh builds); the PostSync
hook's container moves MLflow's champion alias; the next training run's monitor finds the
answer in the log. A manifest whose command, env name, path or port no longer fits the code
breaks one of these steps.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from contract import prediction_log as schema
from contract.names import CHAMPION_ALIAS, MODEL_NAME, PIN_PATH, POLICY_PATH
from contract.pin import parse_pin
from tests.cluster.support import BOOTSTRAP, REPO, find, kustomize, pod_spec, versions
from tests.cluster.test_mlflow_manifest import _expand, _run_manifest_mlflow
from tests.cluster.test_prediction_log_db import platform_url, run_job
from tests.promotion.fakeforge import FakeForge
from tests.promotion.git_http import GitHttpServer
from tests.support import console_script, free_port, stop_process, wait_http

pytestmark = pytest.mark.slow

TOKEN = "bot-token-for-the-loop"
IMAGE_APP_FILES = ("pyproject.toml", "README.md", "contract", "ml", "promotion", "bentos", "primer")  # Dockerfile


@dataclass
class Lab:
    """The local stand-ins for what the manifests name, and where pods' volumes live."""

    root: Path
    urls: dict[str, str]  # in-cluster URL prefix -> local URL
    app_dir: Path  # the image's WORKDIR /app
    objects: dict[str, list[dict[str, Any]]]  # rendered apps, by folder
    secrets: dict[str, dict[str, str]]
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    claims: dict[str, Path] = field(default_factory=dict)
    log_url: str = ""  # the prediction log's database, as the test reads it

    def claim(self, name: str) -> Path:
        return self.claims.setdefault(name, _mkdir(self.root / "claims" / name))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _volumes(lab: Lab, spec: dict[str, Any], pod: Path) -> dict[str, Path]:
    """Each volume of a pod as a local folder: ConfigMap files written out, claims shared."""
    out = {}
    for volume in spec.get("volumes", []):
        name = volume["name"]
        if "configMap" in volume:
            data = lab.configmaps.get(volume["configMap"]["name"])
            assert data is not None, f"volume {name}: no ConfigMap {volume['configMap']['name']} rendered"
            folder = _mkdir(pod / "configmaps" / name)
            for key, text in data.items():
                (folder / key).write_text(text)
            out[name] = folder
        elif "persistentVolumeClaim" in volume:
            out[name] = lab.claim(volume["persistentVolumeClaim"]["claimName"])
        else:
            out[name] = _mkdir(pod / "empty" / name)
    return out


def _localize(value: str, lab: Lab, mounts: dict[str, Path]) -> str:
    for remote, local in sorted(lab.urls.items(), key=lambda kv: -len(kv[0])):
        value = value.replace(remote, local)
    # One pass, longest path first: a mapped path is never mapped again (/tmp/... inside it).
    paths = {**{p: str(local) for p, local in mounts.items()}, "/app": str(lab.app_dir)}
    alternatives = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
    value = re.sub(rf"(?<![\w/])({alternatives})(?=/|$|:)", lambda m: paths[m.group(1)], value)
    assert "svc.cluster.local" not in value and "gitea-http" not in value, f"no local stand-in for {value!r}"
    return value


def _env(lab: Lab, c: dict[str, Any], mounts: dict[str, Path], internet: dict[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ref in c.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(lab.configmaps[ref["configMapRef"]["name"]])
        else:
            env.update(lab.secrets[ref["secretRef"]["name"]])
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(item["value"], env)
            continue
        source = item["valueFrom"]
        ref = source.get("configMapKeyRef") or source["secretKeyRef"]
        store = lab.configmaps if "configMapKeyRef" in source else lab.secrets
        assert ref["key"] in store.get(ref["name"], {}), f"{c['name']}: {ref['name']} has no key {ref['key']}"
        env[item["name"]] = store[ref["name"]][ref["key"]]
    env = {k: _localize(v, lab, mounts) for k, v in env.items()}
    env.update({k: v for k, v in internet.items() if env.get(k) == "yfinance"})  # the internet's stand-in
    return env


def _run(lab: Lab, c: dict[str, Any], spec: dict[str, Any], pod: Path, *, port: int | None = None,
         internet: dict[str, str] | None = None, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """The container as a process: exact command and args, env, mounts; its port mapped."""
    volumes = _volumes(lab, spec, pod)
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", [])}
    env = _env(lab, c, mounts, internet or {})
    _mkdir(Path(env.get("HOME", pod / "home")))
    argv = [_localize(_expand(a, env), lab, mounts) for a in [*c["command"], *c.get("args", [])]]
    if port is not None:
        container_port = str(c["ports"][0]["containerPort"])
        argv = [re.sub(rf"(?<!\d){container_port}(?!\d)", str(port), a).replace("0.0.0.0", "127.0.0.1")
                for a in argv]
    argv[0] = console_script(argv[0])
    base = {**{k: v for k, v in os.environ.items() if k in {"PATH", "LANG", "LC_ALL", "GIT_CONFIG_GLOBAL"}},
            **_image_env()}
    log = pod / f"{c['name']}.log"
    with open(log, "wb") as out:
        if not wait:
            return subprocess.Popen(argv, cwd=lab.app_dir, env={**base, **env}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        proc = subprocess.run(argv, cwd=lab.app_dir, env={**base, **env}, stdout=out, stderr=subprocess.STDOUT,
                              timeout=600)
    assert proc.returncode == 0, f"{c['name']} exited {proc.returncode}:\n{log.read_text()[-3000:]}"
    return proc


def _image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's final stage (what every container starts with), PATH aside."""
    final = (REPO / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1].replace("\\\n", " ")
    pairs = [p for line in final.splitlines() if line.startswith("ENV ") for p in line[4:].split()]
    env = dict(p.split("=", 1) for p in pairs)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", env
    return {k: v for k, v in env.items() if k != "PATH"}


def _render_at(lab: Lab, git_url: str, app: str, into: Path) -> list[dict[str, Any]]:
    """apps/<app> rendered from the repository's main as Argo CD would (a fresh clone)."""
    subprocess.run(["git", "-c", f"http.extraHeader=Authorization: Basic {_basic()}", "clone", "-q", git_url,
                    str(into)], check=True, timeout=60)
    objects = kustomize(into / "apps" / app)
    lab.configmaps.update({o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"})
    return objects


def _basic() -> str:
    import base64

    return base64.b64encode(f"primer-bot:{TOKEN}".encode()).decode()


@pytest.fixture
def seeded_git(tmp_path: Path) -> Iterator[tuple[GitHttpServer, str]]:
    """The lab's Gitea repository, served over HTTP: the manifests and the pin *of the working
    tree* (the files under test, committed or not), seeded by lib.sh's own steps."""
    repos = _mkdir(tmp_path / "git")
    bare = repos / "primer" / "mlops-primer.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = _mkdir(tmp_path / "seed")
    for folder in ("apps", "promotion"):
        shutil.copytree(REPO / folder, seed / folder, ignore=shutil.ignore_patterns("__pycache__"))
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], [*identity, "commit", "-q", "-m", "The checkout"]):
        subprocess.run(["git", *cmd], cwd=seed, check=True, capture_output=True)
    script = f'unpin_seed "{seed}" && set_image_tag "{seed}" "$(image_tag_of "{seed}")"' \
             f' && git -C "{seed}" push -q "{bare}" HEAD:refs/heads/main'
    proc = subprocess.run(["bash", "-c", f'set -euo pipefail; . "{BOOTSTRAP}/lib.sh"; {script}'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    server = GitHttpServer(repos, TOKEN)
    try:
        yield server, server.url("primer/mlops-primer.git")
    finally:
        server.stop()


def _image_app(root: Path) -> Path:
    """The image's /app (the Dockerfile's COPY list), with the gate's first pin as a pull
    request (`bootstrap: propose`): the path every later promotion takes."""
    app = _mkdir(root / "app")
    for name in IMAGE_APP_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, app / name)
    policy = app / POLICY_PATH
    text, n = re.subn(r"(?m)^bootstrap: commit\b", "bootstrap: propose", policy.read_text())
    assert n == 1, "promotion/policy.yaml no longer says `bootstrap: commit`"
    policy.write_text(text)
    return app


def test_the_manifests_run_the_loop(apps, postgres, seeded_git, tmp_path: Path) -> None:
    git_server, git_url = seeded_git
    forge = FakeForge("gitea", token=TOKEN)
    with _run_manifest_mlflow(apps, postgres, _mkdir(tmp_path / "mlflow"), "mlflow_loop") as (ml_port, _, ml_log):
        mlflow_url = f"http://127.0.0.1:{ml_port}"
        training = find(apps["apps/training"], "ConfigMap", "primer-training")["data"]
        lab = Lab(
            root=tmp_path, app_dir=_image_app(tmp_path), objects=apps,
            # Service names -> local stand-ins; the git remote's path is the forge's repository.
            urls={training["PRIMER_GIT_REMOTE"]: git_url, training["PRIMER_FORGE_URL"]: forge.url,
                  training["MLFLOW_TRACKING_URI"]: mlflow_url},
            secrets={"primer-forge": {"PRIMER_FORGE_TOKEN": TOKEN}},
            configmaps={"replay-clock": {"PRIMER_REPLAY_EPOCH": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}},
        )
        _prediction_log_database(lab, postgres, "mlflow_loop")
        offline = {"PRIMER_DATA_SOURCE": "synthetic"}
        image_files = sorted(lab.app_dir.rglob("*"))
        try:
            _loop(lab, forge, git_url, offline)
            # readOnlyRootFilesystem: every container writes only to its volumes, never to /app.
            assert sorted(lab.app_dir.rglob("*")) == image_files, \
                f"written into the image's /app: {sorted(set(lab.app_dir.rglob('*')) - set(image_files))[:5]}"
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- MLflow log ---\n{ml_log.read_text(errors='replace')[-1500:]}") from exc
        finally:
            forge.stop()


def _loop(lab: Lab, forge: FakeForge, git_url: str, offline: dict[str, str]) -> None:
    # 1. Training: the CronJob's job template as Argo CD renders it from main.
    before = _render_at(lab, git_url, "training", lab.root / "checkout-0")
    cron = find(before, "CronJob", "primer-train")
    spec = pod_spec(cron)
    pod = _mkdir(lab.root / "pods" / "train-1")
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        _run(lab, c, spec, pod, internet=offline)
    assert "warning:" not in (pod / "monitor.log").read_text(), (pod / "monitor.log").read_text()
    assert any(lab.claims.get("replay-history", Path("/nonexistent")).glob("*.csv")), "no history downloaded"
    (pr,) = forge.open_prs()
    version = int(re.search(r"v(\d+)", pr["title"]).group(1))

    # 2. The admin merges the pull request (a merge commit, as Gitea makes it).
    work = lab.root / "admin"
    auth = ["-c", f"http.extraHeader=Authorization: Basic {_basic()}"]
    subprocess.run(["git", *auth, "clone", "-q", git_url, str(work)], check=True, timeout=60)
    for cmd in (["fetch", "-q", "origin", pr["head"]["ref"]],
                ["-c", "user.name=primer", "-c", "user.email=primer@primer.lab", "merge", "-q", "--no-ff",
                 "-m", f"Merge pull request '{pr['title']}'", "FETCH_HEAD"],
                ["push", "-q", "origin", "HEAD:main"]):
        subprocess.run(["git", *auth, *cmd], cwd=work, check=True, timeout=60)

    # 3. Serving rendered at the merged commit: a new pin ConfigMap (so the pods roll) naming it.
    serving = _render_at(lab, git_url, "serving", lab.root / "checkout-1")
    deployment = find(serving, "Deployment", "primer-serving")
    spec = pod_spec(deployment)
    (pin_volume,) = [v for v in spec["volumes"] if v.get("configMap", {}).get("name", "").startswith("model-pin-")]
    pin_cm = pin_volume["configMap"]["name"]
    assert pin_cm not in {o["metadata"]["name"] for o in before if o["kind"] == "ConfigMap"}, "the pin did not change"
    assert parse_pin(lab.configmaps[pin_cm]["model-version.yaml"], PIN_PATH).version == version

    # 4. The serving container from that rendering serves the new version once ready.
    port = free_port()
    (container,) = spec["containers"]
    pod = _mkdir(lab.root / "pods" / "serving")
    proc = _run(lab, container, spec, pod, port=port, internet=offline, wait=False)
    try:
        ready = container["readinessProbe"]["httpGet"]["path"]
        wait_http(f"http://127.0.0.1:{port}{ready}", 120, proc, pod / f"{container['name']}.log")
        answer = httpx.get(f"http://127.0.0.1:{port}/predictionForTomorrow", timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == str(version)
        _wait_for_log_rows(lab, version)  # the answer, in the prediction log's database
    finally:
        stop_process(proc)

    # 5. The PostSync hook's container moves the champion alias to the pin.
    hook = find(serving, "Job", "primer-registry-sync")
    spec = pod_spec(hook)
    pod = _mkdir(lab.root / "pods" / "hook")
    for c in spec["containers"]:
        _run(lab, c, spec, pod)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = lab.urls[lab.configmaps["primer-training"]["MLFLOW_TRACKING_URI"]]
    logs = "\n".join(p.read_text() for p in pod.glob("*.log"))
    try:
        champion = MlflowClient(uri).get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    except MlflowException as exc:
        raise AssertionError(f"the hook left no alias {CHAMPION_ALIAS} ({exc}); it said:\n{logs}") from exc
    assert int(champion.version) == version, logs

    # 6. The next training run's monitor reads the service's answer from the log (its next close
    # is not known yet on the replay clock: it waits, counted, without a warning).
    monitor = next(c for c in pod_spec(cron)["initContainers"] if c["name"] == "monitor")
    pod = _mkdir(lab.root / "pods" / "train-2")
    _run(lab, monitor, pod_spec(cron), pod, internet=offline)
    said = (pod / "monitor.log").read_text()
    assert f"version {version}: 1 answer(s) wait for their next close" in said and "warning:" not in said, said


def _prediction_log_database(lab: Lab, postgres: Any, mlflow_db: str) -> None:
    """apps/mlflow's PostSync Job on the real PostgreSQL (beside MLflow's database), then Secret
    prediction-log as platform.sh writes it (its URL line run by bash), the PostgreSQL Service
    mapped to the local server."""
    values = versions()
    job = run_job(lab.objects, postgres, values, "p" * 32, mlflow_db=mlflow_db)
    assert job.returncode == 0, job.stderr
    lab.secrets["prediction-log"] = {"PRIMER_PREDICTION_LOG": platform_url(values, "p" * 32)}
    lab.urls[f"@{values['PREDICTION_LOG_HOST']}:5432/"] = f"@127.0.0.1:{postgres.port}/"
    lab.log_url = f"postgresql+psycopg://{values['PREDICTION_LOG_USER']}@127.0.0.1:{postgres.port}/" \
                  f"{values['PREDICTION_LOG_DB']}"


def _wait_for_log_rows(lab: Lab, version: int, timeout: float = 30.0) -> None:
    """The service writes the log off the request path: wait until its answer for ``version`` is in it."""
    engine = sa.create_engine(lab.log_url)
    deadline = time.monotonic() + timeout
    found = 0
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if sa.inspect(conn).has_table(schema.TABLE_NAME):
                    found = conn.execute(sa.text(f"SELECT count(*) FROM {schema.TABLE_NAME} "
                                                 f"WHERE {schema.MODEL_VERSION} = :v"), {"v": version}).scalar_one()
                    if found == 1:
                        return
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise AssertionError(f"the prediction log holds {found} answer(s) of version {version} after {timeout:.0f} s, "
                         "expected 1")
