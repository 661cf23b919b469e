"""Git details: how the token reaches git over HTTP, and remote classification."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from contract.settings import PromotionSettings
from promotion.gitops import GitError, local_path, remote_branch_sha
from tests.promotion.git_http import GitHttpServer


@pytest.fixture
def http_git() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP endpoint standing in for a git host: records headers, answers 403."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/primer/repo.git", seen
    finally:
        server.shutdown()
        server.server_close()


def test_token_goes_in_one_command_header_and_is_redacted(http_git: tuple[str, list[dict[str, str]]],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = http_git
    monkeypatch.setenv("HOME", str(tmp_path))  # prove nothing is written to a global git config
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    token = "tok-1234567890"
    with pytest.raises(GitError) as err:
        remote_branch_sha(url, "main", token)
    assert token not in str(err.value)
    expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    assert seen and all(h.get("Authorization") == expected for h in seen)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and token in p.read_text(errors="ignore")]
    assert written == []


def test_local_path_classification(tmp_path: Path) -> None:
    assert local_path(str(tmp_path)) == tmp_path
    assert local_path(f"file://{tmp_path}") == tmp_path
    assert local_path("https://gitea.example/primer/repo.git") is None
    assert local_path("git@github.com:owner/repo.git") is None
    assert local_path("relative/dir") == Path("relative/dir")


def test_credentials_in_a_remote_url_never_reach_an_error_message(http_git: tuple[str, list[dict[str, str]]]) -> None:
    # The failing command line is quoted in GitError (it ends up in CronJob logs and ProposalError).
    url, _ = http_git
    with_creds = url.replace("http://", "http://primer:s3cret-pass@")
    with pytest.raises(GitError) as err:
        remote_branch_sha(with_creds, "main")
    assert "s3cret-pass" not in str(err.value) and "://***@127.0.0.1" in str(err.value)


def test_push_to_a_named_remote_sends_the_token(http_git: tuple[str, list[dict[str, str]]], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`primer promote --push` with PRIMER_GIT_REMOTE=<remote name>: the token follows the remote's URL."""
    from primer.promotion_commands import _push
    from promotion.gitops import git

    url, seen = http_git
    repo = tmp_path / "repo"
    git("init", "-q", "-b", "main", str(repo))
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init", cwd=repo)
    git("remote", "add", "upstream", url, cwd=repo)
    monkeypatch.setenv("PRIMER_GIT_REMOTE", "upstream")
    monkeypatch.setenv("PRIMER_FORGE_TOKEN", "tok-named-remote")
    with pytest.raises(GitError) as err:  # the stand-in answers 403
        _push(PromotionSettings.load(), repo)
    assert "tok-named-remote" not in str(err.value)
    expected = "Basic " + base64.b64encode(b"x-access-token:tok-named-remote").decode()
    assert seen and all(h.get("Authorization") == expected for h in seen)


@pytest.fixture
def git_host(tmp_path: Path) -> Iterator[tuple[GitHttpServer, str]]:
    """A bare repository (the pin on main) served by real `git http-backend` behind token auth."""
    from contract.names import PIN_PATH
    from contract.pin import write_pin
    from promotion.gitops import git

    seed, root = tmp_path / "seed", tmp_path / "srv"
    (seed / PIN_PATH).parent.mkdir(parents=True)
    write_pin(seed / PIN_PATH, 1)
    git("init", "-q", "-b", "main", str(seed))
    git("add", "-A", cwd=seed)
    git("commit", "-q", "-m", "Promote spy-direction to v1", cwd=seed)
    root.mkdir()
    git("clone", "-q", "--bare", str(seed), str(root / "repo.git"))
    server = GitHttpServer(root, token="tok-push-1234")
    try:
        yield server, server.url("repo.git")
    finally:
        server.stop()


def test_a_promotion_branch_is_pushed_over_http_with_the_token_and_refused_without(
        git_host: tuple[GitHttpServer, str], tmp_path: Path) -> None:
    """The CronJob's path to Gitea: clone, branch, commit, push over HTTP, authenticated by the token only."""
    from promotion.gitops import git, push_pin_branch

    server, url = git_host
    with pytest.raises(GitError) as err:
        push_pin_branch(url, "main", "promote/spy-direction-v2", 2, "Promote spy-direction to v2", token=None)
    assert server.refused and "tok-push-1234" not in str(err.value)

    res = push_pin_branch(url, "main", "promote/spy-direction-v2", 2, "Promote spy-direction to v2",
                          token="tok-push-1234")
    assert res.created and res.base_version == 1
    bare = server.root / "repo.git"
    assert git("rev-parse", "refs/heads/promote/spy-direction-v2", cwd=bare).stdout.strip() == res.commit
    changed = git("diff", "--name-only", "main", "promote/spy-direction-v2", cwd=bare).stdout.split()
    assert changed == ["promotion/model-version.yaml"]
    # Pushing again is a reuse, not a second branch or commit.
    again = push_pin_branch(url, "main", "promote/spy-direction-v2", 2, "Promote spy-direction to v2",
                            token="tok-push-1234")
    assert not again.created and again.commit == res.commit
