"""Git operations for promotion, through the ``git`` command line.

Why the CLI and not GitPython: every step here is one git command a reader
can copy into a terminal to see what happened. Commands run in a throw-away
clone (a temp dir per proposal, so concurrent runs never share a work tree),
except one case: committing straight to the branch checked out in the local
working repository (``primer up``), which must happen in place.

The forge token (PRIMER_FORGE_TOKEN) reaches git only through
``git -c http.extraHeader=...`` on the command line of one process: it is never
written to a file or to git config, and it is redacted from error messages.
"""

from __future__ import annotations

import base64
import logging
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contract.errors import PrimerError
from contract.names import PIN_PATH
from contract.pin import Pin, PinError, parse_pin, read_pin, write_pin
from contract.settings import child_env

log = logging.getLogger(__name__)

GIT_TIMEOUT = 120  # seconds: a hung remote must not hang the CronJob forever


class GitError(PrimerError):
    """A git command failed; the message holds the command and git's own words."""


class PinMoved(GitError):
    """The target branch pins another version than the evaluation was scored against.

    The evidence is then stale: pushing would replace a champion the challenger
    was never compared with (e.g. a PR was merged after this run read its pin).
    """

    def __init__(self, branch: str, found: int | None, expected: int | None) -> None:
        def name(v: int | None) -> str:
            return "nothing" if v is None else f"v{v}"

        super().__init__(f"{branch} now pins {name(found)}, but the evaluation compared against {name(expected)}")
        self.found = found
        self.expected = expected


# ``expected_base`` of the functions below: the version the evaluation assumed the
# branch pins (None: nothing pinned), or "any" to skip the check (human operations).
ExpectedBase = int | None | Literal["any"]


def _check_base(branch: str, found: int | None, expected: ExpectedBase) -> None:
    if expected != "any" and found != expected:
        raise PinMoved(branch, found, expected)


def _auth_args(remote: str | None, token: str | None) -> list[str]:
    if not token or not remote or not remote.startswith(("http://", "https://")):
        return []
    # Basic auth with the token as password is what both GitHub and Gitea accept for git over HTTPS.
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return ["-c", f"http.extraHeader=Authorization: Basic {basic}"]


def _identity_args(cwd: Path | None) -> list[str]:
    """A committer identity when git has none it would accept (a CronJob pod has no ~/.gitconfig).

    ``git var`` answers with git's own rules (environment, then config) and fails where a
    commit would; only then does ours apply, so a human's identity is never replaced.
    """
    env = child_env(LC_ALL="C")
    known = all(
        subprocess.run(["git", "var", ident], cwd=cwd, capture_output=True, text=True, env=env).returncode == 0
        for ident in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT")
    )
    if known:
        return []
    return ["-c", "user.name=primer", "-c", "user.email=primer@localhost"]


def git(*args: str, cwd: Path | str | None = None, remote: str | None = None, token: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one git command; raise :class:`GitError` (token redacted) when it fails and ``check``."""
    cmd = ["git", *_auth_args(remote, token), *args]
    env = child_env(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=GIT_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {' '.join(args)}: timed out after {GIT_TIMEOUT}s") from exc
    if check and proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip()
        raise GitError(redact(f"git {' '.join(args)} failed ({proc.returncode}): {said}", token))
    return proc


def remote_url(repo: Path, remote: str) -> str:
    """The URL of ``remote`` when it names a configured remote of ``repo``, else ``remote`` itself (a URL)."""
    named = git("remote", "get-url", remote, cwd=repo, check=False)
    return named.stdout.strip() if named.returncode == 0 else remote


def local_path(remote: str) -> Path | None:
    """The filesystem path of a local remote (plain path or file://), else None."""
    if remote.startswith("file://"):
        return Path(remote[len("file://"):])
    if "://" in remote or re.match(r"^[\w.-]+@[\w.-]+:", remote) or re.match(r"^[\w.-]+:(?!/)", remote):
        return None
    return Path(remote)


def checked_out_branch(repo: Path) -> str | None:
    """The branch checked out in a non-bare repository (None for bare repos or a detached HEAD)."""
    if git("rev-parse", "--is-bare-repository", cwd=repo).stdout.strip() == "true":
        return None
    proc = git("symbolic-ref", "--short", "-q", "HEAD", cwd=repo, check=False)
    return proc.stdout.strip() or None


def is_dirty(repo: Path, path: str) -> bool:
    """True when ``path`` has staged or unstaged changes (or is untracked) in ``repo``."""
    return bool(git("status", "--porcelain", "--", path, cwd=repo).stdout.strip())


def commit_paths(repo: Path, message: str, *paths: str) -> str:
    """Commit exactly ``paths`` (other staged work in the tree is left alone); return the sha."""
    git("add", "--", *paths, cwd=repo)
    git(*_identity_args(repo), "commit", "-q", "-m", message, "--", *paths, cwd=repo)
    return head(repo)


def refuse_dirty_pin(repo: Path, pin_path: str) -> None:
    """A human's uncommitted edit of the pin is never committed over."""
    if is_dirty(repo, pin_path):
        raise GitError(f"{repo / pin_path} has uncommitted changes; refusing to commit the pin over them "
                       f"(see git diff -- {pin_path})")


def commit_pin(repo: Path, pin_path: str, version: int | None, message: str) -> str:
    """Write ``version`` into the pin of a working tree and commit only that file; return the sha.

    If the commit fails (a hook, no identity, ...) the pin is put back as it was, so the
    tree is not left with a dirty pin that blocks the retry. Refuses a dirty pin first.
    """
    refuse_dirty_pin(repo, pin_path)
    path = repo / pin_path
    before = path.read_text() if path.exists() else None
    write_pin(path, version)
    try:
        return commit_paths(repo, message, pin_path)
    except GitError:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)
        git("reset", "-q", "--", pin_path, cwd=repo, check=False)
        raise


def head(repo: Path) -> str:
    return git("rev-parse", "HEAD", cwd=repo).stdout.strip()


def remote_branch_sha(remote: str, branch: str, token: str | None = None) -> str | None:
    out = git("ls-remote", "--heads", remote, f"refs/heads/{branch}", remote=remote, token=token).stdout.strip()
    return out.split()[0] if out else None


@dataclass(frozen=True)
class PinCommit:
    """One commit in the history of the pin file."""

    sha: str
    subject: str
    version: int | None


def pin_history(repo: Path, pin_path: str = PIN_PATH) -> list[PinCommit]:
    """Versions the pin held, newest commit first (commits where the file was unparsable are skipped)."""
    out = git("log", "--format=%H%x09%s", "--", pin_path, cwd=repo).stdout.strip()
    history = []
    for line in out.splitlines():
        sha, _, subject = line.partition("\t")
        shown = git("show", f"{sha}:{pin_path}", cwd=repo, check=False)
        if shown.returncode != 0:
            continue  # the commit deleted the file
        try:
            pin = parse_pin(shown.stdout, f"{sha[:8]}:{pin_path}")
        except PinError:
            continue
        history.append(PinCommit(sha, subject, pin.version))
    return history


@contextmanager
def _clone(remote: str, branch: str, token: str | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="primer-git-") as tmp:
        work = Path(tmp) / "repo"
        git("clone", "-q", "--no-tags", "--single-branch", "--branch", branch, remote, str(work),
            remote=remote, token=token)
        yield work


def remote_pin_history(remote: str, branch: str, token: str | None, pin_path: str = PIN_PATH) -> list[PinCommit]:
    """:func:`pin_history` of ``branch`` at ``remote`` (a fresh clone, removed afterwards)."""
    with _clone(remote, branch, token) as work:
        return pin_history(work, pin_path)


@dataclass(frozen=True)
class PushResult:
    branch: str
    commit: str | None
    created: bool  # False: reused an identical branch, or nothing to do
    already_pinned: bool = False
    in_place: bool = False  # committed in the local working repository, nothing pushed
    base_version: int | None = None  # what the target branch pinned when we looked


def _branch_pin(work: Path, remote: str, branch: str, token: str | None, pin_path: str) -> tuple[str, Pin]:
    git("fetch", "-q", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}", cwd=work,
        remote=remote, token=token)
    sha = git("rev-parse", f"refs/remotes/origin/{branch}", cwd=work).stdout.strip()
    text = git("show", f"{sha}:{pin_path}", cwd=work).stdout
    return sha, parse_pin(text, f"{branch}:{pin_path}")


def _reuse(work: Path, remote: str, branch: str, version: int, token: str | None, pin_path: str,
           base_version: int | None) -> PushResult:
    sha, pin = _branch_pin(work, remote, branch, token, pin_path)
    if pin.version != version:
        raise GitError(f"remote branch {branch} already exists but pins version {pin.version}, not {version}; "
                       "delete it or resolve by hand")
    log.info("branch %s already holds the pin change (%s); reusing it", branch, sha[:8])
    return PushResult(branch, sha, created=False, base_version=base_version)


def push_pin_branch(remote: str, base: str, branch: str, version: int, message: str,
                    token: str | None = None, pin_path: str = PIN_PATH,
                    expected_base: ExpectedBase = "any") -> PushResult:
    """Create ``branch`` from ``base`` with only the pin changed to ``version`` and push it.

    Idempotent: if the remote branch exists and pins ``version`` it is reused,
    including when another run pushed it between our check and our push.
    Raises :class:`PinMoved` (nothing pushed) when ``base`` does not pin ``expected_base``.
    """
    with _clone(remote, base, token) as work:
        current = read_pin(work / pin_path)
        if current.version == version:
            return PushResult(branch, head(work), created=False, already_pinned=True, base_version=version)
        _check_base(base, current.version, expected_base)
        if remote_branch_sha(remote, branch, token):
            return _reuse(work, remote, branch, version, token, pin_path, current.version)
        git("checkout", "-q", "-b", branch, cwd=work)
        write_pin(work / pin_path, version)
        sha = commit_paths(work, message, pin_path)
        proc = git("push", "-q", "origin", f"{branch}:refs/heads/{branch}", cwd=work, remote=remote, token=token,
                   check=False)
        if proc.returncode != 0:
            # Lost a race with a concurrent run? Then the branch is there now and holds the same change.
            if remote_branch_sha(remote, branch, token):
                return _reuse(work, remote, branch, version, token, pin_path, current.version)
            err = (proc.stderr or proc.stdout).strip()
            raise GitError(redact(f"push of {branch} to {remote} rejected: {err}", token))
        return PushResult(branch, sha, created=True, base_version=current.version)


def commit_pin_direct(remote: str, branch: str, version: int, message: str,
                      token: str | None = None, pin_path: str = PIN_PATH, attempts: int = 3,
                      expected_base: ExpectedBase = "any") -> PushResult:
    """Commit the pin straight onto ``branch`` (bootstrap ``commit`` mode).

    Raises :class:`PinMoved` (nothing committed) when ``branch`` does not pin
    ``expected_base``: a bootstrap commit must never replace a pinned champion.

    If ``remote`` is a local non-bare repository with ``branch`` checked out
    (``primer up`` on a developer checkout), git would refuse the push, so the
    pin is written and committed in that working tree, but only when the pin
    file has no uncommitted changes there (a human's edit is never overwritten).
    """
    local = local_path(remote)
    if local is not None and local.exists() and checked_out_branch(local) == branch:
        refuse_dirty_pin(local, pin_path)
        found = read_pin(local / pin_path).version
        if found == version:
            return PushResult(branch, head(local), created=False, already_pinned=True, in_place=True)
        _check_base(branch, found, expected_base)
        return PushResult(branch, commit_pin(local, pin_path, version, message), created=True, in_place=True)
    last = ""
    for _ in range(attempts):
        with _clone(remote, branch, token) as work:
            found = read_pin(work / pin_path).version
            if found == version:
                return PushResult(branch, head(work), created=False, already_pinned=True)
            _check_base(branch, found, expected_base)
            write_pin(work / pin_path, version)
            sha = commit_paths(work, message, pin_path)
            proc = git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=work, remote=remote, token=token,
                       check=False)
            if proc.returncode == 0:
                return PushResult(branch, sha, created=True)
            last = (proc.stderr or proc.stdout).strip()
            if "non-fast-forward" not in last and "fetch first" not in last:
                break  # not a race: a hook or permissions said no
            log.info("%s moved while committing the pin; retrying on the new tip", branch)
    raise GitError(redact(f"push of the pin to {remote} {branch} rejected: {last}", token))


def redact(text: str, token: str | None = None) -> str:
    """``text`` without the token and without credentials embedded in URLs (https://user:pass@host/...)."""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"://[^/@\s]+@", "://***@", text)
