"""A local stand-in for a hosted forge's REST API (Gitea or GitHub).

It implements exactly the five endpoints promotion/forge.py calls — list
open PRs (paged like the real ones), create a PR, close a PR (PATCH state=closed), edit a PR's
title and body (the same PATCH), comment on a PR — with
each forge's real answers for the cases we handle (401 on a bad token,
Gitea 409 / GitHub 422 when a PR for the branch already exists), and records
every request so tests can assert method, path, headers and body.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeForge:
    kind: str  # "gitea" | "github"
    token: str = "s3cret-token"
    repo: str = "primer/mlops-primer"
    prs: list[dict[str, Any]] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    force_status: int | None = None  # answer every request with this status (e.g. 500)
    stale_lists: int = 0  # the next N list calls answer [] (another run's PR not visible yet)
    max_page_size: int = 50  # the server's cap on limit/per_page (Gitea: MAX_RESPONSE_ITEMS)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.prefix = "/api/v1" if self.kind == "gitea" else ""
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                forge._dispatch(self)

            do_GET = do_POST = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        # A short poll: stop() (shutdown) waits up to one interval, after every test that uses a forge.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """What PRIMER_FORGE_URL is set to (Gitea's web root; GitHub's API base)."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def open_prs(self) -> list[dict[str, Any]]:
        return [p for p in self.prs if p["state"] == "open"]

    # -- request handling

    def _send(self, h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self.lock:
            self.requests.append(Recorded(h.command, parts.path, parse_qs(parts.query), dict(h.headers), body))
            if self.force_status:
                return self._send(h, self.force_status, {"message": f"forced {self.force_status}"})
            scheme = "token" if self.kind == "gitea" else "Bearer"
            if h.headers.get("Authorization") != f"{scheme} {self.token}":
                msg = "Bad credentials" if self.kind == "github" else "user does not exist [uid: 0, name: ]"
                return self._send(h, 401, {"message": msg})
            base = f"{self.prefix}/repos/{self.repo}"
            path = parts.path
            if path == f"{base}/pulls" and h.command == "GET":
                if self.stale_lists > 0:
                    self.stale_lists -= 1
                    return self._send(h, 200, [])
                return self._send(h, 200, self._page(parse_qs(parts.query)))
            if path == f"{base}/pulls" and h.command == "POST":
                return self._create(h, body)
            if path.startswith(f"{base}/pulls/") and h.command == "PATCH":
                pr = self._find(int(path.rsplit("/", 1)[1]))
                if pr is None:
                    return self._send(h, 404, {"message": "not found"})
                if body.get("state") == "closed":
                    pr["state"] = "closed"
                pr.update({k: body[k] for k in ("title", "body") if k in body})
                return self._send(h, 201 if self.kind == "gitea" else 200, pr)
            if path.startswith(f"{base}/issues/") and path.endswith("/comments") and h.command == "POST":
                n = int(path.split("/")[-2])
                if self._find(n) is None:
                    return self._send(h, 404, {"message": "not found"})
                self.comments.append({"number": n, "body": body["body"]})
                return self._send(h, 201, {"id": len(self.comments), "body": body["body"]})
            return self._send(h, 404, {"message": f"no route {h.command} {path}"})

    def _page(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Both forges page with ``page`` (1-based); Gitea sizes with ``limit``, GitHub with
        ``per_page``; both cap the size server-side; the default size here is the cap."""
        size_key = "limit" if self.kind == "gitea" else "per_page"
        size = min(int(query.get(size_key, [self.max_page_size])[0]), self.max_page_size)
        page = int(query.get("page", ["1"])[0])
        return self.open_prs()[(page - 1) * size: page * size]

    def _find(self, number: int) -> dict[str, Any] | None:
        return next((p for p in self.prs if p["number"] == number), None)

    def _create(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        missing = [k for k in ("title", "head", "base") if not body.get(k)]
        if missing:
            return self._send(h, 422, {"message": f"missing {missing}"})
        if any(p["head"]["ref"] == body["head"] and p["base"]["ref"] == body["base"] for p in self.open_prs()):
            if self.kind == "gitea":  # routers/api/v1/repo/pull.go: StatusConflict
                return self._send(h, 409, {"message": "pull request already exists for these targets"})
            return self._send(h, 422, {"message": "Validation Failed", "errors": [
                {"resource": "PullRequest", "code": "custom",
                 "message": f"A pull request already exists for {self.repo.split('/')[0]}:{body['head']}."}]})
        n = len(self.prs) + 1
        web = "pulls" if self.kind == "gitea" else "pull"
        pr = {"number": n, "title": body["title"], "body": body.get("body", ""), "state": "open",
              "html_url": f"{self.url}/{self.repo}/{web}/{n}",
              "head": {"ref": body["head"], "label": body["head"]}, "base": {"ref": body["base"]}}
        self.prs.append(pr)
        return self._send(h, 201, pr)
