"""The BentoML service: serves exactly the MLflow model version the pin names.

Run from the repository root: ``bentoml serve bentos.service:PrimerService --port 3000``
(or ``primer serve``). Routes:

* ``GET /predictionForTomorrow?threshold=0.5`` — UP/DOWN for the next trading day
  (a FastAPI app mounted with ``@bentoml.asgi_app``: BentoML's own APIs are POST only).
* ``POST /predict`` — P(up) for caller-supplied feature rows (a BentoML API).
* ``GET /model`` — what is served, where the pin came from, the last error.
* ``/livez``, ``/readyz`` (200 only once the pinned model is loaded), ``/metrics``.

The model is loaded in the background (see :mod:`bentos.runtime`), so the worker
starts in about a second and stays alive, not ready, while MLflow is unreachable.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

import bentoml
import bentoml.exceptions
from bentoml.exceptions import InternalServerError, ServiceUnavailable
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from bentos.runtime import Answer, Runtime, log
from contract.names import CHAMPION_ALIAS, MODEL_NAME

DEFAULT_THRESHOLD = 0.5
MAX_ROWS = 1000

# Features are returns and ratios: real values are far below 1. The bound keeps
# them inside float32 (sklearn trees cast to it) so garbage gets a 400, not a 500.
FEATURE_BOUND = 1e6
_Feature = Annotated[float, Field(allow_inf_nan=False, ge=-FEATURE_BOUND, le=FEATURE_BOUND)]


class FeatureRow(BaseModel):
    """One feature row for ``POST /predict``: finite, bounded floats; unknown fields rejected.

    Spelled out (not generated from ``ml.features.FEATURE_COLUMNS``) because it is a
    public HTTP contract, and so that importing this module does not import pandas
    (``bentoml serve``'s supervisor imports it too: 0.5 s and 80 MB saved).
    tests/serving/test_contract.py fails if it drifts from FEATURE_COLUMNS.
    """

    model_config = ConfigDict(extra="forbid")

    ret_1: _Feature
    ma3_ratio: _Feature
    ma5_ratio: _Feature
    vol_3: _Feature
    ret_5: _Feature
    ma20_ratio: _Feature
    vol_10: _Feature
    range_pct: _Feature
    volume_ratio: _Feature


class Prediction(BaseModel):
    """Response of ``GET /predictionForTomorrow`` (the seed's keys plus provenance)."""

    prediction: str = Field(description="UP if confidence >= threshold, else DOWN")
    confidence: float = Field(description="P(next close > last close) from the model's predict_proba")
    threshold: float
    model_source: str = Field(description='always "mlflow"')
    model_alias: str = Field(description=f'always "{CHAMPION_ALIAS}": the pinned version the alias mirrors')
    model_name: str
    model_version: str
    as_of: str = Field(description="date (YYYY-MM-DD) of the last close the features use")
    stale: bool = Field(
        description="true when fresh market data was unavailable and the row stored at training time is used"
    )


class ModelInfo(BaseModel):
    model_name: str
    model_version: str | None
    run_id: str | None
    metrics: dict[str, float]
    loaded_at: str | None
    ready: bool
    last_error: str | None
    pin_source: str
    pinned_version: str | None
    tracking_uri: str
    mlflow_ui: str | None = Field(description="the served version in the MLflow UI (machine-learning view)")
    data_source: str
    as_of: str | None
    stale: bool | None
    feature_error: str | None


class Problem(BaseModel):
    error: str
    detail: Any = None


app = FastAPI(title="primer", description="SPY next-day direction, served from the pinned MLflow version")


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """4xx JSON that names the offending parameter (FastAPI's default omits a readable message)."""
    errors = exc.errors()
    names = sorted({".".join(str(p) for p in e.get("loc", ())[1:]) or "request" for e in errors})
    first = errors[0].get("msg", "invalid value") if errors else "invalid value"
    return JSONResponse(
        status_code=422,
        content={"error": f"invalid parameter {', '.join(names)}: {first}",
                 "detail": json.loads(json.dumps(errors, default=str))},
    )


def prediction_body(answer: Answer, threshold: float) -> bytes:
    """The ``/predictionForTomorrow`` JSON for a published answer (shared by both code paths below)."""
    threshold += 0.0  # -0.0 -> 0.0
    return json.dumps(
        {
            # Documented rule: UP iff P(up) >= threshold (so threshold 0 is always UP).
            "prediction": "UP" if answer.confidence >= threshold else "DOWN",
            "confidence": answer.confidence,
            "threshold": threshold,
            "model_source": "mlflow",
            "model_alias": CHAMPION_ALIAS,
            "model_name": MODEL_NAME,
            "model_version": answer.model_version,
            "as_of": answer.as_of,
            "stale": answer.stale,
        }
    ).encode()


# Query strings the fast path answers itself: none, or one plain decimal threshold in [0, 1].
# Anything else (other spellings, extra parameters, errors) goes to the FastAPI route.
_FAST_QUERY = re.compile(rb"(?:threshold=(0(?:\.[0-9]{1,20})?|1(?:\.0{1,20})?))?")
_JSON_HEADERS = [(b"content-type", b"application/json")]


class PrimerMiddleware:
    """ASGI middleware inside BentoML's stack (metrics, tracing and access log still apply).

    * ``GET /predictionForTomorrow`` with a model loaded and a plain threshold is
      answered here from the published answer: FastAPI's per-request routing,
      dependency injection and validation cost more than the answer itself (the
      benchmark's a/c ratio). Every other request, including every invalid one and
      the 503s, is handled by the FastAPI route, which also documents the API.
    * ``POST /predict`` takes JSON only: BentoML would try other body parsers and
      answer a malformed Content-Type (multipart without a boundary) with a 500.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.service: PrimerService | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if path == "/predictionForTomorrow" and method == "GET":
                m = _FAST_QUERY.fullmatch(scope["query_string"])
                service = self.service or _current_service()
                self.service = service
                answer = service.runtime.answer if (m and service is not None) else None
                if answer is not None and m is not None and service is not None:
                    service.count_prediction(answer.model_version)
                    threshold = float(m.group(1)) if m.group(1) else DEFAULT_THRESHOLD
                    body = prediction_body(answer, threshold)
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
            elif path.rstrip("/") == "/predict" and method == "POST":
                ctype = dict(scope.get("headers") or ()).get(b"content-type", b"").split(b";")[0].strip().lower()
                if ctype != b"application/json":
                    response = JSONResponse(
                        status_code=415,
                        content={"error": "POST /predict needs Content-Type: application/json, "
                                          f"got {ctype.decode('latin-1')!r}"},
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _current_service() -> PrimerService | None:
    try:
        return bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:  # not instantiated yet
        return None


def _unavailable(runtime: Runtime) -> JSONResponse:
    status = runtime.status()
    if status["ready"]:  # a model, but neither fresh data nor a stored feature row
        error = f"no feature row for tomorrow yet: {status['feature_error'] or 'fetching market data'}"
    else:
        pinned = "loading the pinned model" if status["pinned_version"] else "no model pinned yet"
        reason = status["last_error"] or pinned
        error = f"model not loaded: {reason}"
    return JSONResponse(status_code=503, content={"error": error, "detail": status})


@bentoml.service(
    name="primer",
    # One worker: the model, its caches and both watcher threads live once per
    # worker, and the steady-state request does no model work anyway.
    workers=1,
    traffic={"timeout": 10},
)
@bentoml.asgi_app(app, path="/")
class PrimerService:
    def __init__(self) -> None:
        # Must not import prometheus_client before BentoML set PROMETHEUS_MULTIPROC_DIR
        # (done by the time the instance is created), or /metrics would never show it.
        from prometheus_client import Counter

        from bentos.bentoml_fixes import cancel_request_timers

        if not cancel_request_timers():
            log.warning("BentoML's TimeoutMiddleware changed; its per-request timers are not cancelled")

        self.predictions = Counter(
            "primer_predictions",
            "Predictions served, by model version and route",
            labelnames=("model_version", "route"),
        )
        self._counters: dict[tuple[str, str], Any] = {}
        from contract.settings import ServingSettings

        self.runtime = Runtime(ServingSettings.load())
        self.runtime.start()  # returns at once; loading happens in the background

    def count_prediction(self, version: str, route: str = "predictionForTomorrow", n: int = 1) -> None:
        # labels() takes a lock and a dict lookup; the hot path reuses the child.
        child = self._counters.get((version, route))
        if child is None:
            child = self._counters[(version, route)] = self.predictions.labels(version, route)
        child.inc(n)

    async def __is_ready__(self) -> bool:
        return self.runtime.ready

    @bentoml.on_shutdown
    def _stop(self) -> None:
        self.runtime.stop()

    @app.get(
        "/predictionForTomorrow",
        response_model=Prediction,
        responses={422: {"model": Problem, "description": "threshold is not a number in [0, 1]"},
                   503: {"model": Problem, "description": "no model loaded (nothing pinned, or still loading)"}},
    )
    async def prediction_for_tomorrow(
        self,
        threshold: Annotated[
            float,
            Query(ge=0.0, le=1.0, allow_inf_nan=False, description="UP when P(up) >= threshold; a number in [0, 1]"),
        ] = DEFAULT_THRESHOLD,
    ) -> Response:
        answer = self.runtime.answer  # one read of an immutable snapshot
        if answer is None:
            return _unavailable(self.runtime)
        self.count_prediction(answer.model_version)
        # Values are already valid: skip FastAPI's response-model round trip.
        return Response(prediction_body(answer, threshold), media_type="application/json")

    @app.get("/model", response_model=ModelInfo)
    async def model_info(self) -> Response:
        return JSONResponse(self.runtime.status())

    @bentoml.api
    def predict(self, rows: Annotated[list[FeatureRow], Field(min_length=1, max_length=MAX_ROWS)]) -> list[float]:
        """P(up) for each feature row (fields = the model's feature columns)."""
        model = self.runtime.model
        if model is None:
            raise ServiceUnavailable(
                f"model not loaded: {self.runtime.status()['last_error'] or 'no model pinned yet'}"
            )
        import pandas as pd

        from ml.features import FEATURE_COLUMNS

        frame = pd.DataFrame([r.model_dump() for r in rows], columns=list(FEATURE_COLUMNS))
        probs = model.p_up_rows(frame)
        if not all(math.isfinite(p) for p in probs):
            raise InternalServerError("model returned a non-finite probability")
        self.count_prediction(str(model.version), "predict", len(probs))
        return probs


# @bentoml.service turns the class into a Service, which mypy cannot see through.
PrimerService.add_asgi_middleware(PrimerMiddleware)  # type: ignore[attr-defined]
