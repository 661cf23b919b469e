"""Git over HTTP for tests: the real ``git http-backend`` behind Basic auth, like a forge.

Gitea and GitHub accept a token as the password of HTTP Basic auth for git
pushes; this server does the same with one fixed token, and runs git's own
smart-HTTP backend (CGI) for every authorised request. Only the auth check is
ours; clone, fetch and push are real git.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

GIT_HTTP_BACKEND = Path(subprocess.run(["git", "--exec-path"], capture_output=True, text=True,
                                       check=True).stdout.strip()) / "git-http-backend"


@dataclass
class GitHttpServer:
    root: Path  # folder holding bare repositories
    token: str
    refused: list[str] = field(default_factory=list)  # paths answered 401

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                server._serve(self)

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{repo}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _authorised(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        _, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return password == self.token

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        if not self._authorised(h.headers.get("Authorization")):
            self.refused.append(parts.path)
            h.send_response(401)
            h.send_header("WWW-Authenticate", 'Basic realm="git"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        env = {**os.environ, "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": parts.path, "QUERY_STRING": parts.query, "REQUEST_METHOD": h.command,
               "CONTENT_TYPE": h.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "REMOTE_USER": "primer", "REMOTE_ADDR": "127.0.0.1"}
        if h.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = h.headers["Content-Encoding"]
        if h.headers.get("Git-Protocol"):
            env["HTTP_GIT_PROTOCOL"] = h.headers["Git-Protocol"]
        out = subprocess.run([str(GIT_HTTP_BACKEND)], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        h.send_response(status)
        for name, value in headers:
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
