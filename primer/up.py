"""``primer up`` / ``primer down``: the whole loop on one machine, no VMs.

``up`` starts an MLflow server (SQLite + local artifacts under ``.primer/``),
trains once if nothing is registered yet, applies the promotion policy to the
local git repository, mirrors the pin into MLflow's ``champion`` alias and
starts the BentoML service on the pinned version. The servers keep running in
the background; their PIDs are recorded (with each process's start time, so a
PID the system has since reused for another program is never taken for ours)
so ``down`` can stop them and a second ``up`` resumes without duplicating anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import httpx
import psutil

from contract.errors import PrimerError
from contract.names import MLFLOW_PORT, MODEL_NAME, SERVING_PORT
from contract.pin import read_pin
from contract.settings import LocalSettings, child_env
from primer.processes import (
    ServerError,
    console_script,
    mlflow_server_command,
    mlflow_server_env,
    require_free_port,
    stop_process,
    wait_http,
)

STATE_DIR_NAME = ".primer"
MLFLOW_START_TIMEOUT = 90.0
SERVING_READY_TIMEOUT = 120.0
# A server `up` finds running must answer its ready URL this soon, or `up` says so
# (rather than going on and hanging in the MLflow client's retries).
RESUME_READY_TIMEOUT = 10.0
# Start times are seconds since the epoch derived from the boot time, which the
# kernel reports to the second and which moves when the clock is set: allow that.
_START_TIME_TOLERANCE = 1.0
# The option of `primer up` that sets each server's port (for error messages).
PORT_OPTIONS = {"mlflow": "--mlflow-port", "serving": "--port"}


@dataclass
class Process:
    pid: int
    port: int
    log: str
    # psutil's create_time() of ``pid`` when `up` started it: tells our process from
    # another one that got the same PID later. None in state files of older versions.
    create_time: float | None = None


@dataclass
class State:
    """What ``up`` started, kept in ``.primer/state.json``."""

    processes: dict[str, Process] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls(processes={
            k: Process(pid=int(v["pid"]), port=int(v["port"]), log=str(v.get("log", "")),
                       create_time=v.get("create_time"))
            for k, v in raw.get("processes", {}).items()
        })

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": {k: asdict(v) for k, v in self.processes.items()}}, indent=2))
        tmp.replace(path)


def _create_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _ours(proc: Process) -> bool:
    """Is the recorded process still running, and still the one `up` started?

    A PID alone is not enough: after a reboot or a long time the system hands it to
    another program, which ``down`` must not signal and ``up`` must not mistake for
    a server. An entry without a start time (older state file) cannot be told apart,
    so it is not ours either.
    """
    if proc.create_time is None:
        return False
    try:
        p = psutil.Process(proc.pid)
        if p.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped: not running
            return False
        return abs(p.create_time() - proc.create_time) <= _START_TIME_TOLERANCE
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone, or another user's: not ours
        return False


def _step(n: int, total: int, text: str) -> None:
    click.secho(f"[{n}/{total}] {text}", bold=True)


def _spawn(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        # Own session: the server outlives this command and is stopped as a group.
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def _check_port(port: int, name: str, label: str) -> None:
    require_free_port(port, PORT_OPTIONS[name], label)


def _ours_on(state: State, name: str, port: int) -> Process | None:
    """The recorded ``name`` server when it is ours and listens on ``port`` (resume it), else None."""
    running = state.processes.get(name)
    return running if running and running.port == port and _ours(running) else None


def _registered_versions(tracking_uri: str) -> int:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return len(MlflowClient(tracking_uri=tracking_uri).search_model_versions(f"name='{MODEL_NAME}'"))
    except MlflowException:
        return 0


def _run_cli(args: list[str], env: dict[str, str], cwd: Path) -> None:
    """Run a ``primer`` subcommand, its output streamed to the terminal."""
    proc = subprocess.run([console_script("primer"), *args], env=env, cwd=cwd)
    if proc.returncode != 0:
        raise PrimerError(f"`primer {' '.join(args)}` failed with exit code {proc.returncode}")


@contextmanager
def _stop_on_interrupt(started: list[subprocess.Popen]) -> Iterator[None]:
    """Ctrl-C (or a failed step) stops what this invocation started; the state folder is kept."""
    try:
        yield
    except BaseException:
        for proc in started:
            stop_process(proc)
        raise


def _refuse_other_ports(state: State, state_file: Path, ports: dict[str, int]) -> None:
    """Stop before starting anything if a server of an earlier `up` still runs on another port.

    Starting a second one would leave the first running but forgotten by the state
    (``down`` could not stop it) and, for MLflow, two servers writing one database.
    """
    moved = [(name, proc) for name, proc in state.processes.items()
             if name in ports and proc.port != ports[name] and _ours(proc)]
    if not moved:
        return
    where = ", ".join(f"{name} on port {proc.port} (pid {proc.pid})" for name, proc in moved)
    asked = ", ".join(f"{PORT_OPTIONS[name]} {ports[name]}" for name, _ in moved)
    recorded = " ".join(f"{PORT_OPTIONS[name]} {proc.port}" for name, proc in moved)
    raise PrimerError(
        f"an earlier `primer up` still runs {where} (recorded in {state_file}), not on the requested {asked}: "
        f"run `primer down` first to stop {'them' if len(moved) > 1 else 'it'}, or re-run `primer up` with {recorded}"
    )


def _ensure_server(name: str, label: str, cmd: list[str], *, port: int, ready_url: str, timeout: float,
                   env: dict[str, str], repo: Path, state: State, state_file: Path,
                   started: list[subprocess.Popen]) -> None:
    """Start a background server unless the one recorded in the state still runs; wait until it is ready."""
    if running := _ours_on(state, name, port):
        try:
            wait_http(ready_url, RESUME_READY_TIMEOUT)
        except ServerError as exc:
            raise PrimerError(
                f"{name} is running (pid {running.pid}, port {port}) but does not answer: "
                f"{str(exc).splitlines()[0]}; see {running.log}, or run `primer down` and `primer up` again"
            ) from exc
        click.echo(f"      already running (pid {running.pid})")
        return
    running = state.processes.get(name)
    if running and _create_time(running.pid) is not None and not _ours(running):
        click.echo(f"      stale state entry: pid {running.pid} is not the {name} server `primer up` started; "
                   "starting a new one")
    _check_port(port, name, label)
    log = state_file.parent / "logs" / f"{name}.log"
    proc = _spawn(cmd, log, env, repo)
    started.append(proc)
    state.processes[name] = Process(pid=proc.pid, port=port, log=str(log), create_time=_create_time(proc.pid))
    state.save(state_file)
    try:
        wait_http(ready_url, timeout, proc, log)
    except ServerError as exc:
        raise PrimerError(f"{name} did not become ready: {exc}") from exc
    click.echo(f"      ready (pid {proc.pid}, log {log})")


def _pinned_version(settings: LocalSettings) -> int | None:
    return read_pin(settings.pin_path()).version


@dataclass(frozen=True)
class Plan:
    """One `primer up`: where things live and the environment its steps run with."""

    settings: LocalSettings
    repo: Path
    state_file: Path
    tracking_uri: str
    mlflow_port: int
    port: int
    env: dict[str, str]

    @property
    def state_dir(self) -> Path:
        return self.state_file.parent


def plan(settings: LocalSettings, *, offline: bool, source: str | None, mlflow_port: int, port: int) -> Plan:
    repo = settings.repo_root()
    tracking_uri = f"http://127.0.0.1:{mlflow_port}"
    extra = {"MLFLOW_TRACKING_URI": tracking_uri, "PRIMER_REPO_DIR": str(repo), "PYTHONUNBUFFERED": "1"}
    env = {"PRIMER_FORGE": "none", **child_env(**extra)}
    if offline or source:
        env["PRIMER_DATA_SOURCE"] = source or "synthetic"
    return Plan(settings, repo, settings.state_path() / "state.json", tracking_uri, mlflow_port, port, env)


def _check_ports(p: Plan, state: State) -> None:
    """Both ports before any step: a busy API port found only after training would leave
    a registered (and maybe pinned) version behind a failed command."""
    _refuse_other_ports(state, p.state_file, {"mlflow": p.mlflow_port, "serving": p.port})
    for name, label, port in (("mlflow", "MLflow", p.mlflow_port), ("serving", "the API", p.port)):
        if not _ours_on(state, name, port):
            _check_port(port, name, label)


def _train_unless_resumable(p: Plan, retrain: bool, total: int) -> None:
    """Skipped when a model is registered and pinned (resume, don't duplicate); registered but
    nothing pinned (e.g. Ctrl-C after registering): train again so the policy can pin."""
    have = _registered_versions(p.tracking_uri)
    pinned = _pinned_version(p.settings)
    if have and pinned is not None and not retrain:
        _step(2, total, f"training skipped: {have} version(s) of {MODEL_NAME} already registered, "
                        f"v{pinned} pinned (--retrain to train again)")
        return
    why = f"; {have} version(s) registered but none pinned" if have and pinned is None and not retrain else ""
    _step(2, total, f"training ({p.env.get('PRIMER_DATA_SOURCE') or p.settings.data_source} data{why})")
    _run_cli(["train"], p.env, p.repo)


def _pin_and_sync(p: Plan, total: int) -> None:
    """3. the pin (git) and 4. the champion alias (MLflow mirrors git)."""
    pinned = _pinned_version(p.settings)
    if pinned is None:
        raise PrimerError(
            "nothing is pinned after training: the [promote] line of `primer train` above says why "
            "(with `bootstrap: propose` in promotion/policy.yaml the first model becomes a branch: "
            "git merge promote/... and run `primer up` again)"
        )
    _step(3, total, f"pinned in git: {MODEL_NAME} v{pinned}")
    _step(4, total, "mirroring the pin into MLflow (alias champion)")
    _run_cli(["registry", "sync"], p.env, p.repo)


def up(p: Plan, *, retrain: bool) -> None:
    state = State.load(p.state_file)
    started: list[subprocess.Popen] = []
    total = 5
    t0 = time.monotonic()
    _check_ports(p, state)
    servers = dict(state=state, state_file=p.state_file, started=started, repo=p.repo)
    with _stop_on_interrupt(started):
        _step(1, total, f"MLflow server on {p.tracking_uri} (state in {p.state_dir})")
        (p.state_dir / "mlartifacts").mkdir(parents=True, exist_ok=True)
        backend = f"sqlite:///{p.state_dir / 'mlflow.db'}"
        _ensure_server("mlflow", "MLflow", mlflow_server_command(backend, p.state_dir / "mlartifacts", p.mlflow_port),
                       port=p.mlflow_port, ready_url=f"{p.tracking_uri}/health", timeout=MLFLOW_START_TIMEOUT,
                       env=mlflow_server_env(p.env), **servers)  # type: ignore[arg-type]
        _train_unless_resumable(p, retrain, total)
        _pin_and_sync(p, total)
        _step(5, total, f"BentoML service on http://127.0.0.1:{p.port}")
        _ensure_server("serving", "the API", [console_script("primer"), "serve", "--port", str(p.port)],
                       port=p.port, ready_url=f"http://127.0.0.1:{p.port}/readyz", timeout=SERVING_READY_TIMEOUT,
                       env=p.env, **servers)  # type: ignore[arg-type]
    _summary(p, time.monotonic() - t0)


def _summary(p: Plan, elapsed: float) -> None:
    api, tracking_uri = f"http://127.0.0.1:{p.port}", p.tracking_uri
    try:
        answer = httpx.get(f"{api}/predictionForTomorrow", params={"threshold": 0.3}, timeout=10).text
    except httpx.HTTPError as exc:
        answer = f"(no answer yet: {exc})"
    prefix = "" if p.mlflow_port == MLFLOW_PORT else f"MLFLOW_TRACKING_URI={tracking_uri} "
    next_steps = [
        (f"{prefix}primer train --source synthetic:7", "train again; a winner becomes a promote/... branch"),
        (f"git merge promote/{MODEL_NAME}-vN", "promote: the service swaps without a restart"),
        (f"{prefix}primer rollback", "roll back to the previous pin (a commit)"),
        (f"{prefix}primer status --service-url {api}", "pin vs MLflow aliases vs what serves: drift?"),
        ("primer down", "stop the servers (state in .primer/ is kept)"),
    ]
    width = max(len(cmd) for cmd, _ in next_steps) + 3
    click.echo("")
    click.secho(f"The loop is up ({elapsed:.0f}s).", fg="green", bold=True)
    click.echo(f"""
  MLflow UI      {tracking_uri}   (experiment and model: {MODEL_NAME})
  API            curl "{api}/predictionForTomorrow?threshold=0.3"
                 -> {answer.strip()}
  What serves    {api}/model
  The pin        {p.settings.pin_path()}  (git decides what serves)

Next:""")
    for cmd, why in next_steps:
        click.echo(f"  {cmd.ljust(width)}{why}")


def down(settings: LocalSettings) -> None:
    state_file = settings.state_path() / "state.json"
    state = State.load(state_file)
    if not state.processes:
        click.echo("nothing to stop: no servers recorded in " + str(state_file))
        return
    for name in ("serving", "mlflow"):
        proc = state.processes.get(name)
        if proc is None:
            continue
        if _ours(proc):
            stop_process(proc.pid)
            click.echo(f"stopped {name} (pid {proc.pid}, port {proc.port})")
        elif _create_time(proc.pid) is not None:
            # The PID runs, but not the process `up` started (reused PID, or an entry
            # without a start time): signalling it could stop an unrelated program.
            click.echo(f"skipped stale {name} entry: pid {proc.pid} is not the server `primer up` started "
                       "(reused pid, or a state file without start times); not signalled")
        else:
            click.echo(f"{name} was not running (pid {proc.pid})")
        # Gone from the state once handled, so a failure on the next one does not repeat this one.
        del state.processes[name]
        state.save(state_file)
    click.echo(f"state kept in {state_file.parent}; `primer up` resumes from it")


@click.command("up")
@click.option("--offline", is_flag=True, help="Use generated (synthetic) prices instead of yfinance.")
@click.option("--source", help="Data source: yfinance, csv:PATH or synthetic[:SEED] (default: PRIMER_DATA_SOURCE).")
@click.option("--mlflow-port", type=int, default=MLFLOW_PORT, show_default=True,
              help="Port of the local MLflow server.")
@click.option("--port", type=int, default=SERVING_PORT, show_default=True, help="Port of the BentoML service.")
@click.option("--retrain", is_flag=True, help="Train again even when a model is already registered and pinned.")
def up_command(offline: bool, source: str | None, mlflow_port: int, port: int, retrain: bool) -> None:
    """Run the whole loop on this machine: MLflow, one training run, the pin, the API.

    Servers keep running in the background (logs and state in .primer/, or
    PRIMER_STATE_DIR); `primer down` stops them and `primer up` again resumes.
    Training is skipped when a version is registered and pinned (--retrain forces it).
    """
    settings = LocalSettings.load()
    try:
        up(plan(settings, offline=offline, source=source, mlflow_port=mlflow_port, port=port), retrain=retrain)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: stopped what this run started; state kept in .primer/", err=True)
        sys.exit(130)


@click.command("down")
def down_command() -> None:
    """Stop the servers `primer up` started (state in .primer/, or PRIMER_STATE_DIR, is kept)."""
    down(LocalSettings.load())
