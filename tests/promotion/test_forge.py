"""Forge clients against the local stand-in for Gitea's and GitHub's REST API."""

from __future__ import annotations

import pytest

from contract.settings import PromotionSettings
from promotion.forge import ForgeError, HttpForge, NoForge, forge_from_settings
from tests.promotion.fakeforge import FakeForge
from tests.support import free_port


def forge_from_env(env: dict[str, str]) -> object:
    """The forge the given PRIMER_FORGE* variables configure (as the settings object reads them)."""
    fields = {name.removeprefix("PRIMER_").lower(): value for name, value in env.items()}
    return forge_from_settings(PromotionSettings(**fields))


def client(f: FakeForge, token: str | None = None) -> HttpForge:
    forge = forge_from_env({"PRIMER_FORGE": f.kind, "PRIMER_FORGE_URL": f.url, "PRIMER_FORGE_REPO": f.repo,
                            "PRIMER_FORGE_TOKEN": token or f.token})
    assert isinstance(forge, HttpForge)
    return forge


def test_endpoints_methods_paths_headers_bodies(fake_forge: FakeForge) -> None:
    f = fake_forge
    fc = client(f)
    pr, created = fc.create_pr("Promote spy-direction to v2", "evidence", "promote/spy-direction-v2", "main")
    assert created
    assert pr.number == 1 and pr.head == "promote/spy-direction-v2" and pr.url.endswith("/1")
    assert [p.number for p in fc.list_open_prs()] == [1]
    fc.comment(1, "Superseded")
    fc.close_pr(1)
    assert fc.list_open_prs() == []
    prefix = "/api/v1" if f.kind == "gitea" else ""
    base = f"{prefix}/repos/{f.repo}"
    got = [(r.method, r.path, r.body) for r in f.requests]
    assert got == [
        ("POST", f"{base}/pulls", {"title": "Promote spy-direction to v2", "body": "evidence",
                                   "head": "promote/spy-direction-v2", "base": "main"}),
        ("GET", f"{base}/pulls", None),  # page 1: the PR
        ("GET", f"{base}/pulls", None),  # page 2: empty, the end
        ("POST", f"{base}/issues/1/comments", {"body": "Superseded"}),
        ("PATCH", f"{base}/pulls/1", {"state": "closed"}),
        ("GET", f"{base}/pulls", None),
    ]
    auth = {r.headers["Authorization"] for r in f.requests}
    assert auth == ({f"token {f.token}"} if f.kind == "gitea" else {f"Bearer {f.token}"})
    assert f.requests[1].query["state"] == ["open"]
    if f.kind == "github":
        assert f.requests[0].headers["Accept"] == "application/vnd.github+json"
        assert f.requests[0].headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert f.comments == [{"number": 1, "body": "Superseded"}]


def test_listing_reads_every_page_even_when_the_forge_caps_the_page_size(fake_forge: FakeForge) -> None:
    """Gitea caps page sizes at MAX_RESPONSE_ITEMS (an admin may set it below what we ask)."""
    fake_forge.max_page_size = 3
    fc = client(fake_forge)
    for v in range(2, 10):
        fc.create_pr(f"Promote spy-direction to v{v}", "b", f"promote/spy-direction-v{v}", "main")
    assert [p.head for p in fc.list_open_prs()] == [f"promote/spy-direction-v{v}" for v in range(2, 10)]
    pages = [r.query["page"] for r in fake_forge.requests if r.method == "GET"]
    assert pages == [["1"], ["2"], ["3"], ["4"]]


def test_existing_pr_answer_returns_the_open_pr(fake_forge: FakeForge) -> None:
    """Gitea answers 409, GitHub 422 when a PR for the branch is already open."""
    fc = client(fake_forge)
    first, created_first = fc.create_pr("t", "b", "promote/spy-direction-v3", "main")
    again, created_again = fc.create_pr("t", "b", "promote/spy-direction-v3", "main")
    assert again == first and created_first and not created_again
    statuses = [r.method for r in fake_forge.requests]
    assert statuses == ["POST", "POST", "GET", "GET"]
    assert len(fake_forge.prs) == 1


def test_bad_token_is_a_clear_error_and_not_retried(fake_forge: FakeForge) -> None:
    fc = client(fake_forge, token="wrong")
    with pytest.raises(ForgeError, match="HTTP 401") as err:
        fc.list_open_prs()
    assert err.value.status == 401
    assert "wrong" not in str(err.value)
    assert len(fake_forge.requests) == 1  # a 4xx is an answer: no retry


def test_5xx_is_retried_then_reported(gitea: FakeForge) -> None:
    gitea.force_status = 502
    with pytest.raises(ForgeError, match="HTTP 502"):
        client(gitea).list_open_prs()
    assert len(gitea.requests) == 3


def test_forge_down_is_retried_then_reported() -> None:
    import httpx

    attempts: list[str] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            attempts.append(str(request.url))
            return super().handle_request(request)

    url = f"http://127.0.0.1:{free_port()}/api/v1"  # nothing listens there
    fc = HttpForge("gitea", url, "o/r", None, transport=Counting())
    with pytest.raises(ForgeError, match="unreachable: ConnectError"):
        fc.list_open_prs()
    assert len(attempts) == 3  # connection errors are retried, then reported


def test_configuration() -> None:
    assert isinstance(forge_from_env({}), NoForge)
    g = forge_from_env({"PRIMER_FORGE": "gitea", "PRIMER_FORGE_REPO": "o/r"})
    assert isinstance(g, HttpForge) and g.api_base == "http://gitea:3000/api/v1"
    g = forge_from_env({"PRIMER_FORGE": "gitea", "PRIMER_FORGE_URL": "http://h/api/v1/", "PRIMER_FORGE_REPO": "o/r"})
    assert g.api_base == "http://h/api/v1"
    h = forge_from_env({"PRIMER_FORGE": "github", "PRIMER_FORGE_REPO": "o/r"})
    assert isinstance(h, HttpForge) and h.api_base == "https://api.github.com"
    with pytest.raises(ForgeError, match="owner/name"):
        forge_from_env({"PRIMER_FORGE": "github", "PRIMER_FORGE_REPO": "nope"})
    with pytest.raises(ForgeError, match="gitea, github or none"):
        forge_from_env({"PRIMER_FORGE": "gitlab"})
