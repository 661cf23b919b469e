"""Fixes for BentoML's HTTP server, each checked against bentoml 1.4.40.

Each function patches one thing, returns False when BentoML's code moved on (the service
logs a warning then, and tests/serving/test_bentoml_fixes.py fails), and is idempotent.

Request timers: ``TimeoutMiddleware`` arms ``loop.call_later(timeout, ...)`` for every request and
never cancels it. The timer handle keeps the request's ``contextvars`` context alive
(its OpenTelemetry span, attributes, ...) until the timeout elapses: at 2,000 req/s
and a 60 s timeout that is ~120k contexts, hundreds of MB, and full garbage
collections long enough to dominate p99 latency. Cancelling the timer once the
request is done releases all of it. Behaviour is otherwise unchanged (504 on timeout).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

# BentoML logs every exception of an API call here, client errors included, with a traceback.
API_ERROR_LOGGER = "bentoml._internal.server.http_app"


def cancel_request_timers() -> bool:
    """Patch ``TimeoutMiddleware.__call__`` to cancel its timer; False if BentoML's code moved on."""
    try:
        from bentoml._internal.server.http import traffic
    except ImportError:
        return False
    cls = getattr(traffic, "TimeoutMiddleware", None)
    if cls is None or getattr(cls, "_primer_cancels_timer", False) or not hasattr(cls, "_set_timer_out"):
        return False
    JSONResponse = traffic.JSONResponse  # noqa: N806 - the class BentoML itself uses

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:  # noqa: N807
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                message = f"Not able to process the request in {self.timeout} seconds"
                resp = JSONResponse({"error": message}, status_code=504)
                await resp(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    cls.__call__ = __call__
    cls._primer_cancels_timer = True
    return True


class _BoundedEndpoint:
    """A metric whose ``endpoint`` label goes through ``label_for`` (everything else delegated)."""

    def __init__(self, metric: Any, label_for: Callable[[str], str]) -> None:
        self._metric = metric
        self._label_for = label_for

    def labels(self, *args: Any, **kwargs: Any) -> Any:
        if "endpoint" in kwargs:
            kwargs["endpoint"] = self._label_for(kwargs["endpoint"])
        return self._metric.labels(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metric, name)


def bound_endpoint_labels(label_for: Callable[[str], str]) -> bool:
    """Route BentoML's per-request metrics' ``endpoint`` label through ``label_for``.

    BentoML labels them with the raw request path, so every distinct path (any 404 a
    scanner tries) adds series to ``/metrics`` for the life of the process: 5,000 random
    paths made a scrape 18.7 MB and 8.8 s. ``label_for`` maps unknown paths to one value.
    """
    try:
        from bentoml._internal.server.http import instruments
    except ImportError:
        return False
    cls = getattr(instruments, "RunnerTrafficMetricsMiddleware", None)
    if cls is None or not hasattr(cls, "_setup"):
        return False
    if getattr(cls, "_primer_bounded_endpoints", False):
        return True
    original = cls._setup

    def _setup(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for name, metric in list(vars(self).items()):
            if name.startswith("metrics_") and "endpoint" in getattr(metric, "_labelnames", ()):
                setattr(self, name, _BoundedEndpoint(metric, label_for))

    cls._setup = _setup
    cls._primer_bounded_endpoints = True
    return True


class _ClientErrorFilter(logging.Filter):
    """Drops BentoML's ERROR-with-traceback records for answers that are the client's fault.

    An invalid body (pydantic's ValidationError, BentoML's 4xx exceptions) is an answer,
    not a server fault: the access log already has a line for it. Logging each with a
    traceback let any client write ~1.6 MB/s of log. Server errors (5xx) still log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            return False
        code = getattr(getattr(exc, "error_code", None), "value", 500)
        return not (isinstance(code, int) and code < 500)


def quiet_client_errors() -> bool:
    logger = logging.getLogger(API_ERROR_LOGGER)
    if not any(isinstance(f, _ClientErrorFilter) for f in logger.filters):
        logger.addFilter(_ClientErrorFilter())
    return True
