"""bentos/bentoml_fixes.py against the installed BentoML: each fix still finds what it patches.

The timer fix is exercised here on BentoML's middleware; the bounded metric labels and the
quiet client errors on a real service in test_service.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from bentos.bentoml_fixes import bound_endpoint_labels, cancel_request_timers, quiet_client_errors


async def _call(mw: Any) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    await mw({"type": "http", "method": "GET", "path": "/x", "headers": []}, receive, send)
    return sent


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _slow_app(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(5)


def test_timers_are_cancelled_and_timeouts_still_504() -> None:
    cancel_request_timers()  # True the first time; False when PrimerService already applied it
    assert getattr(TimeoutMiddleware, "_primer_cancels_timer", False), "patch not applied to bentoml's middleware"

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        mw = TimeoutMiddleware(_ok_app, timeout=60)
        for _ in range(20):
            assert (await _call(mw))[0]["status"] == 200
        # Without the fix, 20 live 60-second timers (each holding its request's context) stay queued.
        assert not [h for h in loop._scheduled if not h.cancelled()]  # noqa: SLF001
        slow = TimeoutMiddleware(_slow_app, timeout=0.05)
        assert (await _call(slow))[0]["status"] == 504

    asyncio.run(scenario())


def test_every_fix_applies_to_the_installed_bentoml() -> None:
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    assert bound_endpoint_labels(lambda path: path) and quiet_client_errors()
    assert getattr(RunnerTrafficMetricsMiddleware, "_primer_bounded_endpoints", False)
