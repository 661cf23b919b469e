"""Pull requests through a forge API: Gitea (the in-cluster default), GitHub, or none.

Exactly five endpoints are used, identical in shape on both forges:
list open PRs, create a PR, close a PR (PATCH state=closed), edit a PR's title
and body (the same PATCH; a demotion PR's evidence is refreshed in place) and
comment on a PR (the issues comments API). Retries (tenacity) only on connection errors and
5xx: a 4xx is an answer, not an outage. The token comes only from
PRIMER_FORGE_TOKEN (read by ``contract.settings``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from contract.errors import PrimerError
from contract.settings import PromotionSettings

GITHUB_API = "https://api.github.com"
GITEA_DEFAULT = "http://gitea:3000"
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
PAGE_SIZE = 50  # Gitea's default MAX_RESPONSE_ITEMS; GitHub allows up to 100
MAX_PAGES = 40


class ForgeError(PrimerError):
    """A forge call failed; the message says which call and what the forge answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    title: str
    head: str  # branch name
    state: str = "open"
    body: str = ""


class Forge(Protocol):
    kind: str

    def list_open_prs(self) -> list[PullRequest]: ...
    def create_pr(self, title: str, body: str, head: str, base: str) -> tuple[PullRequest, bool]: ...
    def close_pr(self, number: int) -> None: ...
    def comment(self, number: int, body: str) -> None: ...
    def update_pr(self, number: int, title: str, body: str) -> None: ...


class NoForge:
    """``PRIMER_FORGE=none``: push the branch only (local use); there are no PRs to list."""

    kind = "none"

    def list_open_prs(self) -> list[PullRequest]:
        return []

    def create_pr(self, title: str, body: str, head: str, base: str) -> tuple[PullRequest, bool]:  # pragma: no cover
        raise ForgeError("no forge configured (PRIMER_FORGE=none): cannot open a pull request")

    def close_pr(self, number: int) -> None:  # pragma: no cover
        raise ForgeError("no forge configured (PRIMER_FORGE=none)")

    def comment(self, number: int, body: str) -> None:  # pragma: no cover
        raise ForgeError("no forge configured (PRIMER_FORGE=none)")

    def update_pr(self, number: int, title: str, body: str) -> None:  # pragma: no cover
        raise ForgeError("no forge configured (PRIMER_FORGE=none)")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ForgeError) and exc.status is not None and exc.status >= 500


class HttpForge:
    """Gitea and GitHub share the REST shapes we use; they differ in base URL, auth scheme,
    page-size parameter and the status for "a PR for this branch already exists"
    (Gitea 409, GitHub 422)."""

    def __init__(self, kind: str, api_base: str, repo: str, token: str | None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if kind not in ("gitea", "github"):
            raise ForgeError(f"unknown forge kind {kind!r}")
        if not repo or repo.count("/") != 1:
            raise ForgeError(f"PRIMER_FORGE_REPO must be owner/name, got {repo!r}")
        self.kind = kind
        self.api_base = api_base.rstrip("/")
        self.repo = repo
        headers = {"Accept": "application/json", "User-Agent": "mlops-primer"}
        if kind == "github":
            headers["Accept"] = "application/vnd.github+json"
            headers["X-GitHub-Api-Version"] = "2022-11-28"
        if token:
            headers["Authorization"] = f"token {token}" if kind == "gitea" else f"Bearer {token}"
        self._http = httpx.Client(base_url=self.api_base, headers=headers, timeout=TIMEOUT, transport=transport)

    def close(self) -> None:
        self._http.close()

    @retry(retry=retry_if_exception(_transient), stop=stop_after_attempt(3),
           wait=wait_exponential(multiplier=0.3, max=3), reraise=True)
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._http.request(method, f"/repos/{self.repo}{path}", **kw)  # TransportError -> retried
        if r.status_code >= 400:
            try:
                detail = r.json().get("message") or r.text
            except ValueError:
                detail = r.text
            raise ForgeError(f"{self.kind} {method} {self.api_base}/repos/{self.repo}{path}: "
                             f"HTTP {r.status_code} {str(detail)[:300]}", r.status_code)
        return r.json() if r.content else None

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            return self._call(method, path, **kw)
        except httpx.TransportError as exc:
            raise ForgeError(f"{self.kind} API at {self.api_base} unreachable: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _pr(d: dict[str, Any]) -> PullRequest:
        return PullRequest(number=int(d["number"]), url=d.get("html_url") or d.get("url", ""),
                           title=d.get("title", ""), head=(d.get("head") or {}).get("ref", ""),
                           state=d.get("state", "open"), body=d.get("body") or "")

    def list_open_prs(self) -> list[PullRequest]:
        """Every open PR, page by page until an empty page (a forge may cap the page size
        below what we ask for, so a short page does not prove it was the last)."""
        size = {"limit": PAGE_SIZE} if self.kind == "gitea" else {"per_page": PAGE_SIZE}
        prs: list[PullRequest] = []
        for page in range(1, MAX_PAGES + 1):
            batch = self._request("GET", "/pulls", params={"state": "open", "page": page, **size}) or []
            if not batch:
                return prs
            prs.extend(self._pr(d) for d in batch)
        raise ForgeError(f"{self.kind}: more than {MAX_PAGES * PAGE_SIZE} open pull requests in {self.repo}; "
                         "close some before proposing again")

    def create_pr(self, title: str, body: str, head: str, base: str) -> tuple[PullRequest, bool]:
        """Open a PR: ``(pr, True)``; if one is already open for ``head`` (a concurrent run got
        there first), ``(that pr, False)``."""
        try:
            return self._pr(self._request("POST", "/pulls", json={"title": title, "body": body,
                                                                  "head": head, "base": base})), True
        except ForgeError as exc:
            if exc.status in (409, 422):
                existing = [p for p in self.list_open_prs() if p.head == head]
                if existing:
                    return existing[0], False
            raise

    def close_pr(self, number: int) -> None:
        self._request("PATCH", f"/pulls/{number}", json={"state": "closed"})

    def comment(self, number: int, body: str) -> None:
        self._request("POST", f"/issues/{number}/comments", json={"body": body})

    def update_pr(self, number: int, title: str, body: str) -> None:
        """Replace an open PR's title and body (Gitea: EditPullRequestOption; GitHub: "Update a pull request")."""
        self._request("PATCH", f"/pulls/{number}", json={"title": title, "body": body})


def forge_from_settings(settings: PromotionSettings) -> Forge:
    """PRIMER_FORGE (gitea|github|none, default none), PRIMER_FORGE_URL, PRIMER_FORGE_REPO, PRIMER_FORGE_TOKEN."""
    kind = settings.forge.strip().lower()
    if kind == "none":
        return NoForge()
    repo, token = settings.forge_repo, settings.token()
    if kind == "gitea":
        url = (settings.forge_url or GITEA_DEFAULT).rstrip("/")
        # Accept the web URL (http://gitea:3000) or the API base (.../api/v1).
        api = url if url.endswith("/api/v1") else f"{url}/api/v1"
        return HttpForge("gitea", api, repo, token)
    if kind == "github":
        return HttpForge("github", settings.forge_url or GITHUB_API, repo, token)
    raise ForgeError(f"PRIMER_FORGE must be gitea, github or none, got {kind!r}")
