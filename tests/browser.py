"""Headless Chromium for the browser tests: a small DevTools-protocol client, standard library only.

Debian's ``chromium`` runs with ``--remote-debugging-pipe``: it reads commands on fd 3 and
writes replies and events on fd 4, each a JSON message ended by a NUL byte (no port, no
extra package; playwright cannot download its browsers here). ``--host-resolver-rules``
keeps the browser on loopback: every other name resolves to nothing.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Browser:
    def __init__(self, resolver_rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", window="1400,1000", extra=()):
        self.profile = tempfile.mkdtemp(prefix="cdp-profile-")
        cmd_r, self._cmd_w = os.pipe()   # we write commands -> chromium fd 3
        self._evt_r, evt_w = os.pipe()   # chromium fd 4 -> we read

        def child_fds():  # move the pipe ends to fds 3 and 4 (inheritable) in the child
            a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(evt_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             f"--host-resolver-rules={resolver_rules}",
             f"--user-data-dir={self.profile}", f"--window-size={window}",
             "--no-first-run", "--remote-debugging-pipe", *extra, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)
        os.close(cmd_r)
        os.close(evt_w)
        self._next = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: list[dict] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        buf = b""
        with os.fdopen(self._evt_r, "rb", buffering=0) as f:
            while chunk := f.read(65536):
                buf += chunk
                *msgs, buf = buf.split(b"\0")
                for raw in msgs:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._replies.setdefault(msg["id"], queue.Queue()).put(msg)
                    else:
                        with self._lock:
                            self.events.append(msg)

    def send(self, method, params=None, session=None, timeout=30):
        self._next += 1
        mid = self._next
        q = self._replies.setdefault(mid, queue.Queue())
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        reply = q.get(timeout=timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def new_page(self):
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable", session=sid)
        return Page(self, sid)

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    def __init__(self, browser: Browser, sid: str):
        self.b, self.sid = browser, sid

    def send(self, method, params=None, timeout=30):
        return self.b.send(method, params, session=self.sid, timeout=timeout)

    def goto(self, url):
        return self.send("Page.navigate", {"url": url})

    def eval(self, expr):
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def text(self):
        return self.eval("document.body ? document.body.innerText : ''")

    def wait_for(self, js_condition, timeout=20.0, interval=0.1):
        """Poll a JS expression until truthy; returns its value or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                v = self.eval(js_condition)
            except RuntimeError:  # e.g. context destroyed mid-navigation: poll again
                v = None
            if v:
                return v
            time.sleep(interval)
        raise TimeoutError(js_condition)

    def wait_for_text(self, *needles, timeout=20.0):
        cond = " && ".join(f"document.body && document.body.innerText.includes({json.dumps(n)})" for n in needles)
        return self.wait_for(cond, timeout)

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def events(self, method):
        with self.b._lock:
            return [e["params"] for e in self.b.events if e.get("sessionId") == self.sid and e["method"] == method]

    def responses(self):
        return [(p["response"]["status"], p["response"]["url"]) for p in self.events("Network.responseReceived")]
