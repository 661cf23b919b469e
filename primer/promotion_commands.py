"""Human operations: a git commit promotes or rolls back.

``primer pin check | promote | rollback | registry sync | registry prune | status``. Registered
in ``primer/cli.py``; this module imports nothing from ``ml``.

Exit codes: 0 ok; 1 the operation was refused or failed (the message says why);
3 ``pin check --require-registry`` / ``registry sync`` / ``status --strict`` could not reach
MLflow (or, for ``status``, the forge).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from contract import registry
from contract import ui as ui_links
from contract.errors import PrimerError
from contract.names import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    MODEL_NAME,
    PromotionStatus,
    demotion_branch,
    demotion_title,
    promotion_title,
)
from contract.pin import Pin, PinError, parse_pin, read_pin
from contract.settings import PromotionSettings, StatusSettings
from contract.ui import ui_base
from promotion import gitops
from promotion.forge import ForgeError, forge_from_settings
from promotion.gitops import GitError
from promotion.policy import load_policy
from promotion.propose import PROMOTION_BRANCH_RE, champion_vs_climatology

EXIT_UNREACHABLE = 3
# primer rollback's subject, git revert's, or a demotion PR's (`primer monitor`): what it rolled back from
# is not a rollback target any more.
_ROLLBACK_RE = re.compile(r"^(Roll back |Revert \"|" + re.escape(demotion_title(0, 0).split(" ", 1)[0]) + " )")


class CommandError(PrimerError):
    """A refused or failed operation; ``primer`` prints it as one ``error:`` line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _fail(msg: str, code: int = 1) -> NoReturn:
    raise CommandError(msg, code)


def _warn(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


def _registry_check(settings: PromotionSettings, version: int | None, require: bool) -> str:
    """'ok' | 'unreachable' ; exits 1 when the version is not in the registry."""
    uri = settings.tracking_uri
    try:
        registry.probe(uri)
    except registry.RegistryUnreachable as exc:
        if require:
            _fail(f"{exc}; cannot check the version against the registry", EXIT_UNREACHABLE)
        _warn(f"{exc}; registry check skipped (schema only). Use --require-registry to make this an error.")
        return "unreachable"
    if version is not None and registry.get_version(registry.client(uri), version) is None:
        _fail(f"version {version} does not exist in registered model {MODEL_NAME!r} at {uri}")
    return "ok"


def _validate_version(text: str) -> int:
    """The pin file's own rules applied to a command-line VERSION."""
    try:
        pin = parse_pin(f"model: {MODEL_NAME}\nversion: {text}\n", "VERSION")
    except PinError as exc:
        _fail(str(exc))
    if pin.version is None:
        _fail("VERSION must be an integer >= 1")
    return pin.version


def _repo_and_pin(settings: PromotionSettings) -> tuple[Path, Path, str]:
    pin = settings.pin_path().resolve()
    repo = settings.repo_root()
    try:
        rel = str(pin.relative_to(repo))
    except ValueError:
        _fail(f"pin file {pin} is not inside the repository {repo} (set PRIMER_REPO_DIR)")
    if not (repo / ".git").exists():
        _fail(f"{repo} is not a git repository (set PRIMER_REPO_DIR)")
    return repo, pin, rel


def _push(settings: PromotionSettings, repo: Path) -> None:
    branch = gitops.git("symbolic-ref", "--short", "HEAD", cwd=repo).stdout.strip()
    remote = settings.git_remote or "origin"  # a remote's name or a URL
    url = gitops.remote_url(repo, remote)  # the URL decides whether the token is sent
    gitops.git("push", "-q", remote, f"HEAD:refs/heads/{branch}", cwd=repo, remote=url,
               token=settings.token())
    click.echo(f"pushed {branch} to {gitops.redact(url)}")


def _commit_pin(settings: PromotionSettings, repo: Path, rel: str, version: int, message: str, push: bool) -> str:
    try:
        sha = gitops.commit_pin(repo, rel, version, message)
    except (GitError, PinError) as exc:
        _fail(str(exc))
    click.echo(f"committed {sha[:8]}: {message.splitlines()[0]}")
    if push:
        try:
            _push(settings, repo)
        except GitError as exc:
            _fail(f"committed locally but the push failed: {exc}")
    return sha


# ---------------------------------------------------------------- pin check

@click.group("pin")
def pin_group() -> None:
    """Inspect the pin file (promotion/model-version.yaml)."""


@pin_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--require-registry", is_flag=True,
              help="Fail (exit 3) when MLflow is unreachable instead of warning and checking the schema only.")
def pin_check(file: Path | None, require_registry: bool) -> None:
    """Validate FILE (default: the repository's pin): schema, types, and that the
    version exists in the MLflow registry (MLFLOW_TRACKING_URI) when it is reachable."""
    settings = PromotionSettings.load()
    path = file or settings.pin_path()
    pin = read_pin(path)
    state = _registry_check(settings, pin.version, require_registry)
    where = "exists in the registry" if state == "ok" else "registry not checked"
    if pin.version is None:
        click.echo(f"{path}: ok: {pin.model}, nothing pinned yet (version: null)")
    else:
        click.echo(f"{path}: ok: {pin.model} v{pin.version} ({where})")


# ---------------------------------------------------------------- promote / rollback

@click.command("promote")
@click.argument("version")
@click.option("--reason", default="", help="Why (goes into the commit message).")
@click.option("--push", is_flag=True, help="Push the commit (to PRIMER_GIT_REMOTE, else origin).")
def promote(version: str, reason: str, push: bool) -> None:
    """Pin VERSION and commit it: the commit is the promotion.

    VERSION must exist in the MLflow registry when MLflow is reachable. Refuses
    when the pin file has uncommitted changes. Works on the repository in
    PRIMER_REPO_DIR (else the current git checkout); PRIMER_PIN_FILE overrides the pin path.
    """
    settings = PromotionSettings.load()
    n = _validate_version(version)
    repo, pin, rel = _repo_and_pin(settings)
    try:
        current = read_pin(pin)
    except PinError as exc:
        _fail(f"{exc} (fix the pin file first)")
    if current.version == n:
        click.echo(f"v{n} is already pinned; nothing to commit")
        return
    _registry_check(settings, n, require=False)
    msg = promotion_title(n) + "\n\n" + (f"Reason: {reason}\n" if reason else "") + \
        f"Previously pinned: {'v' + str(current.version) if current.version else 'nothing'}\n"
    _commit_pin(settings, repo, rel, n, msg, push)


def previous_version(history: list[gitops.PinCommit], current: int | None) -> int | None:
    """The newest earlier pin that is not the current one and was not rolled back from since
    it was pinned (``history`` is newest first; a version re-promoted after a rollback counts again).

    A rollback is a ``primer rollback`` commit or a ``git revert`` of a pin commit; what it
    rolled back from is the pin just before it in the history.
    """
    rolled_back_later: set[int] = set()
    for i, h in enumerate(history):
        if h.version is not None and h.version != current and h.version not in rolled_back_later:
            return h.version
        before = history[i + 1].version if i + 1 < len(history) else None
        if _ROLLBACK_RE.match(h.subject) and before is not None:
            rolled_back_later.add(before)
    return None


@click.command("rollback")
@click.option("--to", "to", default=None, metavar="VERSION",
              help="Pin this version instead of the previously pinned one.")
@click.option("--reason", default="", help="Why (goes into the commit message).")
@click.option("--push", is_flag=True, help="Push the commit (to PRIMER_GIT_REMOTE, else origin).")
def rollback(to: str | None, reason: str, push: bool) -> None:
    """Pin the previously pinned version (from the pin file's git history) and commit.

    Versions rolled back from (by this command or `git revert`) since they were last pinned
    are skipped. The version rolled
    back from is tagged promotion_status=rolled_back in MLflow when it is reachable.
    """
    settings = PromotionSettings.load()
    repo, pin, rel = _repo_and_pin(settings)
    try:
        current = read_pin(pin).version
    except PinError as exc:
        _fail(f"{exc} (fix the pin file first)")
    if current is None:
        _fail("nothing is pinned (version: null); there is nothing to roll back")
    if to is not None:
        target = _validate_version(to)
        if target == current:
            _fail(f"v{target} is already pinned")
    else:
        found = previous_version(gitops.pin_history(repo, rel), current)
        if found is None:
            _fail(f"no earlier pinned version in the git history of {rel}; use --to VERSION")
        target = found
    state = _registry_check(settings, target, require=False)
    msg = f"Roll back {MODEL_NAME} from v{current} to v{target}\n\n" + (f"Reason: {reason}\n" if reason else "")
    _commit_pin(settings, repo, rel, target, msg, push)
    if state == "ok":
        try:
            registry.set_status(registry.client(settings.tracking_uri), current, PromotionStatus.ROLLED_BACK)
            click.echo(f"tagged v{current} promotion_status={PromotionStatus.ROLLED_BACK.value}")
        except Exception as exc:  # the commit is what matters; the tag is the registry's record of it
            _warn(f"committed, but could not tag v{current} {PromotionStatus.ROLLED_BACK.value}: {exc}")
    else:
        _warn(f"MLflow unreachable: v{current} not tagged {PromotionStatus.ROLLED_BACK.value}")


# ---------------------------------------------------------------- registry sync

@click.group("registry")
def registry_group() -> None:
    """Mirror git into the MLflow registry."""


@registry_group.command("sync")
def registry_sync() -> None:
    """Set alias champion to the pinned version and tag it promoted (idempotent).
    Argo CD runs this as a PostSync hook."""
    settings = PromotionSettings.load()
    pin = read_pin(settings.pin_path())
    if pin.version is None:
        click.echo("nothing pinned yet (version: null); nothing to sync")
        return
    uri = settings.tracking_uri
    try:
        registry.probe(uri)
        result = registry.sync_champion(registry.client(uri), pin.version)
    except registry.RegistryUnreachable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except LookupError as exc:
        _fail(str(exc))
    click.echo(result.message)


def pin_history_of(settings: PromotionSettings) -> list[gitops.PinCommit]:
    """The pin's git history (newest first): the branch at PRIMER_GIT_REMOTE, else this repository."""
    if settings.git_remote:
        return gitops.remote_pin_history(settings.git_remote, settings.git_branch or "main", settings.token())
    return gitops.pin_history(settings.repo_root())


def _ever_pinned(settings: PromotionSettings) -> set[int]:
    """Every version the pin held in git."""
    return {c.version for c in pin_history_of(settings) if c.version is not None}


@registry_group.command("prune")
@click.option("--keep-recent", type=click.IntRange(min=0), default=48, show_default=True,
              help="Keep this many of the newest versions whatever their status.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
def registry_prune(keep_recent: int, dry_run: bool) -> None:
    """Delete model versions that were never pinned, proposed or aliased, except the newest.
    Every version the pin ever held (its git history) is kept, so any rollback target stays.
    The lab runs this hourly (CronJob primer-registry-prune)."""
    settings = PromotionSettings.load()
    try:
        keep = _ever_pinned(settings)
    except GitError as exc:  # without the pin's history nothing is safe to delete
        _fail(f"cannot read the pin's history, nothing deleted: {exc}")
    uri = settings.tracking_uri
    try:
        registry.probe(uri)
        c = registry.client(uri)
        doomed = registry.prunable_versions(c, keep, keep_recent)
        if not dry_run:
            registry.delete_versions(c, doomed)
    except registry.RegistryUnreachable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    listed = ", ".join(f"v{v}" for v in doomed) or "none"
    kept = ", ".join(f"v{v}" for v in sorted(keep)) or "none"
    click.echo(f"{'would delete' if dry_run else 'deleted'} {len(doomed)} version(s): {listed}; "
               f"ever pinned (kept): {kept}; newest {keep_recent} kept")


# ---------------------------------------------------------------- status

def _fmt_v(v: int | None) -> str:
    return "none" if v is None else f"v{v}"


def _status_pin(pin_path: Path, drift: list[str]) -> int | None:
    try:
        pin: Pin | None = read_pin(pin_path)
    except PinError as exc:
        pin = None
        drift.append(f"pin file invalid: {exc}")
    pinned = pin.version if pin else None
    commit = gitops.git("log", "-1", "--format=%h %s", "--", str(pin_path), cwd=pin_path.parent,
                        check=False).stdout.strip() if pin_path.parent.is_dir() else ""
    click.echo(f"pin (git):            {_fmt_v(pinned)}" + (f"   [{commit}]" if commit else ""))
    return pinned


def _status_aliases(uri: str, pinned: int | None, drift: list[str], unchecked: list[str]) -> None:
    try:
        registry.probe(uri)
        c = registry.client(uri)
        champion, challenger = registry.alias_version(c, CHAMPION_ALIAS), registry.alias_version(c, CHALLENGER_ALIAS)
        ch_status = registry.status_of(c, challenger) if challenger else None
        click.echo(f"champion (MLflow):    {_fmt_v(champion)}")
        click.echo(f"challenger (MLflow):  {_fmt_v(challenger)}" + (f" ({ch_status})" if ch_status else ""))
        if (health := _champion_health(c, challenger, pinned)) is not None:
            click.echo(f"vs climatology:       {health}")
        if (ui := ui_base(uri)) is not None:
            click.echo(f"MLflow UI:            {ui_links.model_url(ui, MODEL_NAME)}")
        if champion != pinned:
            drift.append(f"MLflow alias {CHAMPION_ALIAS} is {_fmt_v(champion)} but git pins {_fmt_v(pinned)} "
                         "(run `primer registry sync`)")
    except registry.RegistryUnreachable as exc:
        click.echo(f"champion (MLflow):    unknown ({exc})")
        unchecked.append(f"MLflow at {registry.public_uri(uri)} (aliases)")


def _champion_health(c: Any, latest: int | None, pinned: int | None) -> str | None:
    """The pinned champion against climatology in the latest run's evidence (skipped if unreadable)."""
    try:
        policy = load_policy(PromotionSettings.load().policy_path())
        return champion_vs_climatology(c, latest, pinned, policy)
    except (PrimerError, OSError, ValueError, KeyError, TypeError) as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def _status_service(service_url: str, pinned: int | None, drift: list[str]) -> None:
    try:
        r = httpx.get(service_url.rstrip("/") + "/model", timeout=5)
        r.raise_for_status()
        served = r.json().get("model_version")
        served_v = int(served) if served not in (None, "") else None
        click.echo(f"service:              {_fmt_v(served_v)}   [{service_url}]")
        if served_v != pinned:
            drift.append(f"service at {service_url} serves {_fmt_v(served_v)} but git pins {_fmt_v(pinned)} "
                         "(rollout pending or failing)")
    except (httpx.HTTPError, ValueError) as exc:
        click.echo(f"service:              unknown ({type(exc).__name__}: {exc})")
        drift.append(f"service at {service_url} did not answer /model")


def _status_live(settings: StatusSettings, pinned: int | None) -> None:
    """The pinned version's live record, as `primer monitor` last wrote it (when the log is configured)."""
    if not settings.prediction_log:
        click.echo("live (monitor):       not configured (PRIMER_PREDICTION_LOG)")
        return
    from ml.monitor import MonitorError, read_reports, summary_line

    try:
        report = read_reports(settings.prediction_log).get(pinned) if pinned is not None else None
    except MonitorError as exc:
        click.echo(f"live (monitor):       unknown ({exc})")
        return
    click.echo(f"live (monitor):       {summary_line(report) if report else 'no report yet (run `primer monitor`)'}")


def _status_prs(settings: PromotionSettings, unchecked: list[str]) -> None:
    demotions = demotion_branch(0, 0).split("/")[0] + "/"
    try:
        forge = forge_from_settings(settings)
        if forge.kind != "none":
            open_prs = forge.list_open_prs()
            prs = [p for p in open_prs if PROMOTION_BRANCH_RE.match(p.head)]
            click.echo(f"open promotion PRs:   {len(prs)}")
            for p in prs:
                click.echo(f"  #{p.number} {p.title}  {p.url}")
            for p in (p for p in open_prs if p.head.startswith(demotions)):
                click.echo(f"open demotion PR:     #{p.number} {p.title}  {p.url}")
    except ForgeError as exc:
        click.echo(f"open promotion PRs:   unknown ({exc})")
        unchecked.append("the forge (open PRs)")


@click.command("status")
@click.option("--service-url", metavar="URL", default=None,
              help="Ask a running service which version it serves (GET <url>/model). Default PRIMER_SERVICE_URL.")
@click.option("--strict", is_flag=True,
              help="Exit 1 when anything drifts from the pin, 3 when MLflow or the forge cannot be asked.")
def status(service_url: str | None, strict: bool) -> None:
    """Pin (git) vs champion/challenger aliases (MLflow) vs the running service, its live record, open PRs.

    The live record is the pinned version's last report from `primer monitor` (read from
    PRIMER_PREDICTION_LOG's database): scored days, log loss against climatology, the
    paired test's p-value, whether a demotion is warranted, and drift alerts.

    Prints a DRIFT line for each disagreement. Open PRs are listed when a forge
    is configured (PRIMER_FORGE, PRIMER_FORGE_URL, PRIMER_FORGE_REPO, PRIMER_FORGE_TOKEN).
    """
    settings = StatusSettings.load(service_url=service_url)
    drift: list[str] = []
    unchecked: list[str] = []  # what could not be compared: never reported as "in sync"
    # Absolute: `git log` runs in the pin's folder.
    pinned = _status_pin(settings.pin_path().resolve(), drift)
    _status_aliases(settings.tracking_uri, pinned, drift, unchecked)
    if settings.service_url:
        _status_service(settings.service_url, pinned, drift)
    _status_live(settings, pinned)
    _status_prs(settings, unchecked)
    for d in drift:
        click.echo(f"DRIFT: {d}")
    if unchecked:
        click.echo(f"NOT CHECKED: {', '.join(unchecked)} did not answer")
    elif not drift:
        click.echo("in sync")
    if strict and drift:
        raise SystemExit(1)
    if strict and unchecked:
        raise SystemExit(3)


COMMANDS = (pin_group, promote, rollback, registry_group, status)
