"""A fix for BentoML's request-timeout middleware (checked against bentoml 1.4.40).

``TimeoutMiddleware`` arms ``loop.call_later(timeout, ...)`` for every request and
never cancels it. The timer handle keeps the request's ``contextvars`` context alive
(its OpenTelemetry span, attributes, ...) until the timeout elapses: at 2,000 req/s
and a 60 s timeout that is ~120k contexts, hundreds of MB, and full garbage
collections long enough to dominate p99 latency. Cancelling the timer once the
request is done releases all of it. Behaviour is otherwise unchanged (504 on timeout).
"""

from __future__ import annotations

import asyncio
from typing import Any


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
