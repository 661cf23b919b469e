"""``primer up`` / ``primer down``: the whole loop on one machine, no VMs.

``up`` starts an MLflow server (SQLite + local artifacts in the state folder, ``.primer/``),
trains once unless a version is registered and pinned, applies the promotion policy to the
local git repository, mirrors the pin into MLflow's ``champion`` alias and starts the
BentoML service on the pinned version. The servers keep running in the background.

Which servers are ours is decided by looking, not by remembering: psutil finds the
processes that belong to this state folder (MLflow's command line names its database
there; the service runs with ``PRIMER_STATE_DIR`` set to it). There is no PID file to go
stale or to name a stranger after a reboot: ``down`` stops exactly those processes and
their children, and a second ``up`` resumes them instead of starting duplicates.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import psutil

from contract import ui as ui_links
from contract.errors import PrimerError
from contract.names import EXPERIMENT_NAME, MLFLOW_PORT, MODEL_NAME, MONITORING_EXPERIMENT_NAME, SERVING_PORT
from contract.pin import read_pin
from contract.settings import LocalSettings, ServingSettings, child_env
from contract.ui import ui_base
from primer.processes import (
    ServerError,
    console_script,
    mlflow_server_command,
    mlflow_server_env,
    require_free_port,
    stop_process,
    wait_http,
)

MLFLOW_START_TIMEOUT = 90.0
SERVING_READY_TIMEOUT = 120.0
# A server `up` finds running must answer its ready URL this soon, or `up` says so
# (rather than going on and hanging in the MLflow client's retries).
RESUME_READY_TIMEOUT = 10.0
# How long the summary waits for an answer from fresh market data (not the stored row).
FRESH_ANSWER_TIMEOUT = 20.0
MONITOR_TIMEOUT = 120.0  # `up`'s monitoring step: scores and logs what there is, or is skipped
PREDICTION_LOG_VAR = ServingSettings.env_name("prediction_log")
DATA_SOURCE_VAR = LocalSettings.env_name("data_source")
NEXT_STEP_WIDTH = 70  # longer commands in the summary's "Next:" list get a line of their own
STATE_VAR = LocalSettings.env_name("state_dir")  # set for the service: how `up` and `down` recognise it


@dataclass(frozen=True)
class Plan:
    """One `primer up`: where things live and the environment its steps run with."""

    settings: LocalSettings
    repo: Path
    state_dir: Path
    tracking_uri: str
    mlflow_port: int
    port: int
    env: dict[str, str]

    @property
    def mlflow_backend(self) -> str:
        return f"sqlite:///{self.state_dir / 'mlflow.db'}"


def plan(settings: LocalSettings, *, offline: bool = False, source: str | None = None,
         mlflow_port: int = MLFLOW_PORT, port: int = SERVING_PORT) -> Plan:
    repo, state_dir = settings.repo_root(), settings.state_path().resolve()
    tracking_uri = f"http://127.0.0.1:{mlflow_port}"
    extra = {"MLFLOW_TRACKING_URI": tracking_uri, "PRIMER_REPO_DIR": str(repo), "PYTHONUNBUFFERED": "1",
             STATE_VAR: str(state_dir)}
    # The service starts before the first pin exists: it must follow the pin file, whatever the shell says.
    env = {"PRIMER_FORGE": "none", **child_env(**extra, PRIMER_PIN_WATCH="true")}
    if offline or source:
        env["PRIMER_DATA_SOURCE"] = source or "synthetic"
    # The service records its answers next to MLflow's database (a value the user set wins).
    env.setdefault(PREDICTION_LOG_VAR, f"sqlite:///{state_dir / 'predictions.db'}")
    return Plan(settings, repo, state_dir, tracking_uri, mlflow_port, port, env)


# ---------------------------------------------------------------- our servers, found by looking


@dataclass(frozen=True)
class Server:
    name: str  # also the log file's name
    label: str  # in messages
    option: str  # the `primer up` option that sets its port
    start_timeout: float
    command: Callable[[Plan], list[str]]
    ready_path: str
    belongs: Callable[[psutil.Process, Plan], bool]  # is this process (the top of) our server?

    def port(self, p: Plan) -> int:
        return p.mlflow_port if self.name == "mlflow" else p.port

    def ready_url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}{self.ready_path}"


def _is_our_mlflow(proc: psutil.Process, p: Plan) -> bool:
    cmd = proc.cmdline()
    return "server" in cmd and p.mlflow_backend in cmd and any(part.endswith("mlflow") for part in cmd)


def _is_our_service(proc: psutil.Process, p: Plan) -> bool:
    cmd = proc.cmdline()
    if "serve" not in cmd or not any(part.endswith("bentoml") for part in cmd):
        return False
    return proc.environ().get(STATE_VAR) == str(p.state_dir)


MLFLOW = Server("mlflow", "MLflow", "--mlflow-port", MLFLOW_START_TIMEOUT,
                lambda p: mlflow_server_command(p.mlflow_backend, p.state_dir / "mlartifacts", p.mlflow_port),
                "/health", _is_our_mlflow)
SERVING = Server("serving", "the API", "--port", SERVING_READY_TIMEOUT,
                 lambda p: [console_script("primer"), "serve", "--port", str(p.port)], "/readyz", _is_our_service)
SERVERS = (MLFLOW, SERVING)


@dataclass(frozen=True)
class Running:
    pid: int
    ports: tuple[int, ...]  # where it listens (empty while it starts, or when it hangs)


def _listening(proc: psutil.Process) -> tuple[int, ...]:
    ports = set()
    for member in (proc, *proc.children(recursive=True)):
        with suppress(psutil.Error):
            ports |= {c.laddr.port for c in member.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    return tuple(sorted(ports))


def find(server: Server, p: Plan) -> Running | None:
    """Our running ``server`` for this state folder, if any (its top process, not a worker)."""
    for proc in psutil.process_iter():
        with suppress(psutil.Error):
            if server.belongs(proc, p) and not _parent_belongs(server, proc, p):
                return Running(proc.pid, _listening(proc))
    return None


def _parent_belongs(server: Server, proc: psutil.Process, p: Plan) -> bool:
    parent = proc.parent()
    try:
        return parent is not None and server.belongs(parent, p)
    except psutil.Error:
        return False


# ---------------------------------------------------------------- up


def _step(n: int, total: int, text: str) -> None:
    click.secho(f"[{n}/{total}] {text}", bold=True)


def _check_ports(p: Plan) -> None:
    """Before any step: servers of an earlier `up` on other ports, or a busy port, stop us now
    (found only after training, they would leave a registered, maybe pinned, version behind)."""
    moved: list[tuple[Server, Running]] = []
    for server in SERVERS:
        running, port = find(server, p), server.port(p)
        if running is None:
            require_free_port(port, server.option, server.label)
        elif running.ports and port not in running.ports:
            moved.append((server, running))
    if moved:
        where = ", ".join(f"{s.name} on port {r.ports[0]} (pid {r.pid})" for s, r in moved)
        asked = ", ".join(f"{s.option} {s.port(p)}" for s, _ in moved)
        again = " ".join(f"{s.option} {r.ports[0]}" for s, r in moved)
        raise PrimerError(f"an earlier `primer up` still runs {where} for {p.state_dir}, not on the requested "
                          f"{asked}: run `primer down` first, or re-run `primer up` with {again}")


def _launch(server: Server, p: Plan, started: list[subprocess.Popen]) -> Callable[[], None]:
    """Resume our running server, or start it; returns the wait until it is ready.

    Starting and waiting are apart so the service can start while MLflow starts and
    training runs: it waits for the pin by itself, and is ready once the pinned model loads.
    """
    port = server.port(p)
    if (running := find(server, p)) is not None:
        def resumed() -> None:
            try:
                wait_http(server.ready_url(port), RESUME_READY_TIMEOUT)
            except ServerError as exc:
                raise PrimerError(
                    f"{server.name} is running (pid {running.pid}) but does not answer on port {port}: "
                    f"{str(exc).splitlines()[0]}; see {p.state_dir / 'logs'}, or run `primer down` and "
                    "`primer up` again") from exc
            click.echo(f"      {server.name} already running (pid {running.pid})")
        return resumed
    log = p.state_dir / "logs" / f"{server.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = mlflow_server_env(p.env) if server is MLFLOW else p.env
    with open(log, "ab") as fh:  # its own session: it outlives this command
        proc = subprocess.Popen(server.command(p), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=p.repo,
                                start_new_session=True)
    started.append(proc)

    def started_ready() -> None:
        try:
            wait_http(server.ready_url(port), server.start_timeout, proc, log)
        except ServerError as exc:
            raise PrimerError(f"{server.name} did not become ready: {exc}") from exc
        click.echo(f"      {server.name} ready (pid {proc.pid}, log {log})")
    return started_ready


@contextmanager
def _stop_on_interrupt(started: list[subprocess.Popen]) -> Iterator[None]:
    """Ctrl-C (or a failed step) stops what this invocation started; the state folder is kept."""
    try:
        yield
    except BaseException:
        for proc in started:
            stop_process(proc)
        raise


def _registered_versions(tracking_uri: str) -> int:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return len(MlflowClient(tracking_uri=tracking_uri).search_model_versions(f"name='{MODEL_NAME}'"))
    except MlflowException:
        return 0


def _run_cli(args: list[str], p: Plan) -> None:
    """Run a ``primer`` subcommand, its output streamed to the terminal."""
    proc = subprocess.run([console_script("primer"), *args], env=p.env, cwd=p.repo)
    if proc.returncode != 0:
        raise PrimerError(f"`primer {' '.join(args)}` failed with exit code {proc.returncode}")


def _train_unless_resumable(p: Plan, retrain: bool, total: int) -> None:
    """Skipped when a model is registered and pinned (resume, don't duplicate); registered but
    nothing pinned (e.g. Ctrl-C after registering): train again so the policy can pin."""
    have = _registered_versions(p.tracking_uri)
    pinned = read_pin(p.settings.pin_path()).version
    if have and pinned is not None and not retrain:
        _step(2, total, f"training skipped: {have} version(s) of {MODEL_NAME} already registered, "
                        f"v{pinned} pinned (--retrain to train again)")
        return
    why = f"; {have} version(s) registered but none pinned" if have and pinned is None and not retrain else ""
    _step(2, total, f"training ({p.env.get('PRIMER_DATA_SOURCE') or p.settings.data_source} data{why})")
    _run_cli(["train"], p)


def _pin_and_sync(p: Plan, total: int) -> None:
    """3. the pin (git) and 4. the champion alias (MLflow mirrors git)."""
    pinned = read_pin(p.settings.pin_path()).version
    if pinned is None:
        raise PrimerError(
            "nothing is pinned after training: the [promote] line of `primer train` above says why "
            "(with `bootstrap: propose` in promotion/policy.yaml the first model becomes a branch: "
            "git merge promote/... and run `primer up` again)"
        )
    _step(3, total, f"pinned in git: {MODEL_NAME} v{pinned}")
    _step(4, total, "mirroring the pin into MLflow (alias champion)")
    _run_cli(["registry", "sync"], p)


def up(p: Plan, *, retrain: bool) -> None:
    started: list[subprocess.Popen] = []
    total, t0 = 6, time.monotonic()
    _check_ports(p)
    with _stop_on_interrupt(started):
        _step(1, total, f"MLflow server on {p.tracking_uri}, BentoML service on http://127.0.0.1:{p.port} "
                        f"(state in {p.state_dir})")
        (p.state_dir / "mlartifacts").mkdir(parents=True, exist_ok=True)
        mlflow_ready = _launch(MLFLOW, p, started)
        service_ready = _launch(SERVING, p, started)  # starts now; ready once the pinned model loads
        mlflow_ready()
        _train_unless_resumable(p, retrain, total)
        _pin_and_sync(p, total)
        _step(5, total, "the service loads the pinned version")
        service_ready()
        _step(6, total, "monitoring: the served answers scored against the next close (primer monitor)")
        _monitor(p)
    _summary(p, time.monotonic() - t0)


def _monitor(p: Plan) -> None:
    """``primer monitor --warn-only``: never stops `up` (a fresh loop has nothing to score yet)."""
    try:
        subprocess.run([console_script("primer"), "monitor", "--warn-only"], env=p.env, cwd=p.repo,
                       timeout=MONITOR_TIMEOUT)
    except subprocess.TimeoutExpired:
        click.echo(f"warning: primer monitor did not finish within {MONITOR_TIMEOUT:.0f}s; skipped "
                   "(run it by hand later)", err=True)


def _first_answer(api: str) -> str:
    """The first answer, fresh: the service fetches market data right after the model loads,
    and until then answers from the row stored at training time (``stale``). Wait a little
    for the fresh one; if it does not come, say why."""
    deadline = time.monotonic() + FRESH_ANSWER_TIMEOUT
    while True:
        try:
            answer = httpx.get(f"{api}/predictionForTomorrow", params={"threshold": 0.3}, timeout=10)
            if answer.status_code == 200 and not answer.json().get("stale"):
                return answer.text.strip()
            why = httpx.get(f"{api}/model", timeout=10).json().get("feature_error") or "no fresh market data yet"
        except (httpx.HTTPError, ValueError) as exc:
            return f"(no answer yet: {exc})"
        if time.monotonic() > deadline:
            indent = " " * 17
            return f"{answer.text.strip()}\n{indent}(stale: the row stored at training time answers, because: {why})"
        time.sleep(0.5)


def _ui_links(tracking_uri: str) -> str:
    """The experiment's runs and the model's versions, in the UI's machine-learning view."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ui = ui_base(tracking_uri) or tracking_uri
    try:
        experiment = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(EXPERIMENT_NAME)
    except MlflowException:  # the loop is up; a link is not worth a traceback
        experiment = None
    runs = ui_links.experiment_url(ui, experiment.experiment_id) if experiment else "(experiment not found)"
    return f"{runs}\n                 {ui_links.model_url(ui, MODEL_NAME)}"


def _monitor_env(p: Plan) -> str:
    """What `primer monitor` needs from this `up` that a shell lacks: the log, and the data source if set."""
    names = (PREDICTION_LOG_VAR, DATA_SOURCE_VAR)
    return "".join(f"{name}={p.env[name]} " for name in names if p.env.get(name))


def _live_link(tracking_uri: str) -> str:
    """The monitor's experiment (one run per served version, a step per scored day), or its name."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ui = ui_base(tracking_uri) or tracking_uri
    try:
        experiment = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(MONITORING_EXPERIMENT_NAME)
    except MlflowException:
        experiment = None
    if experiment is None:
        return f"MLflow experiment {MONITORING_EXPERIMENT_NAME} (created by the first scored day)"
    return ui_links.experiment_url(ui, experiment.experiment_id)


def _summary(p: Plan, elapsed: float) -> None:
    api, tracking_uri = f"http://127.0.0.1:{p.port}", p.tracking_uri
    answer = _first_answer(api)
    prefix = "" if p.mlflow_port == MLFLOW_PORT else f"MLFLOW_TRACKING_URI={tracking_uri} "
    next_steps = [
        (f"{prefix}primer train --source synthetic:7:1.0",
         "train on data with a planted signal; a winner becomes a promote/... branch"),
        (f"git merge promote/{MODEL_NAME}-vN", "promote: the service swaps without a restart"),
        (f"{prefix}primer rollback", "roll back to the previous pin (a commit)"),
        (f"{prefix}primer status --service-url {api}", "pin vs MLflow aliases vs what serves: drift?"),
        (f"{prefix}{_monitor_env(p)}primer monitor",
         "score the served answers once their next close is known; a demotion branch when worse than "
         "climatology"),
        ("primer down", "stop the servers (the state folder is kept)"),
    ]
    width = max(len(cmd) for cmd, _ in next_steps if len(cmd) <= NEXT_STEP_WIDTH) + 3
    click.echo("")
    click.secho(f"The loop is up ({elapsed:.0f}s).", fg="green", bold=True)
    click.echo(f"""
  MLflow UI      {_ui_links(tracking_uri)}
  API            curl "{api}/predictionForTomorrow?threshold=0.3"
                 -> {answer}
  What serves    {api}/model
  Live metrics   {api}/metrics  (primer_live_*, primer_drift_*: refreshed after each `primer monitor`)
                 {_live_link(tracking_uri)}
  The pin        {p.settings.pin_path()}  (git decides what serves)
  State, logs    {p.state_dir}

Next:""")
    for cmd, why in next_steps:  # a long command gets its own line, not a wide table
        click.echo(f"  {cmd.ljust(width)}{why}" if len(cmd) <= NEXT_STEP_WIDTH else f"  {cmd}\n  {'':{width}}{why}")


# ---------------------------------------------------------------- down


def down(p: Plan) -> None:
    """Stop our servers for this state folder; nothing else is ever signalled."""
    stopped = 0
    for server in reversed(SERVERS):  # the service first: it reads from MLflow
        running = find(server, p)
        if running is None:
            continue
        stop_process(running.pid)
        stopped += 1
        where = f", port {running.ports[0]}" if running.ports else ""
        click.echo(f"stopped {server.name} (pid {running.pid}{where})")
    if not stopped:
        click.echo(f"nothing to stop: no `primer up` servers run for {p.state_dir}")
    click.echo(f"state kept in {p.state_dir}; `primer up` resumes from it")


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
    p = plan(LocalSettings.load(), offline=offline, source=source, mlflow_port=mlflow_port, port=port)
    try:
        up(p, retrain=retrain)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: stopped what this run started; state kept in {p.state_dir}", err=True)
        sys.exit(130)


@click.command("down")
def down_command() -> None:
    """Stop the servers `primer up` started for this state folder (.primer/, or PRIMER_STATE_DIR; it is kept)."""
    down(plan(LocalSettings.load()))
