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
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import InternalServerError, ServiceUnavailable
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from bentos.runtime import Runtime, Settings
from ml.features import FEATURE_COLUMNS
from promotion.names import CHAMPION_ALIAS, MODEL_NAME

DEFAULT_THRESHOLD = 0.5
MAX_ROWS = 1000

# Features are returns and ratios: real values are far below 1. The bound keeps
# them inside float32 (sklearn trees cast to it) so garbage gets a 400, not a 500.
FEATURE_BOUND = 1e6

# One typed, validated field per feature: finite, bounded floats (NaN/inf would make
# the model's answer meaningless), unknown fields rejected.
FeatureRow: type[BaseModel] = create_model(
    "FeatureRow",
    __config__=ConfigDict(extra="forbid"),
    **{
        name: (Annotated[float, Field(allow_inf_nan=False, ge=-FEATURE_BOUND, le=FEATURE_BOUND)], ...)
        for name in FEATURE_COLUMNS
    },
)


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
    stale: bool = Field(description="true when fresh market data was unavailable and the row stored at training time is used")


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
        content={"error": f"invalid parameter {', '.join(names)}: {first}", "detail": json.loads(json.dumps(errors, default=str))},
    )


class JsonOnlyPredict:
    """ASGI middleware: ``POST /predict`` takes JSON only.

    BentoML would try other body parsers and answer a malformed Content-Type
    (e.g. multipart without a boundary) with a 500; a client error deserves a 415.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/") == "/predict":
            ctype = dict(scope.get("headers") or ()).get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                response = JSONResponse(
                    status_code=415,
                    content={"error": f"POST /predict needs Content-Type: application/json, got {ctype.decode('latin-1')!r}"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _unavailable(runtime: Runtime) -> JSONResponse:
    status = runtime.status()
    reason = status["last_error"] or ("loading the pinned model" if status["pinned_version"] else "no model pinned yet")
    return JSONResponse(status_code=503, content={"error": f"model not loaded: {reason}", "detail": status})


@bentoml.service(
    name="primer",
    # One worker: the model, its caches and both watcher threads live once per
    # worker, and the steady-state request does no model work anyway.
    workers=1,
    traffic={"timeout": 30},
)
@bentoml.asgi_app(app, path="/")
class PrimerService:
    def __init__(self) -> None:
        # Must not import prometheus_client before BentoML set PROMETHEUS_MULTIPROC_DIR
        # (done by the time the instance is created), or /metrics would never show it.
        from prometheus_client import Counter

        self.predictions = Counter(
            "primer_predictions",
            "Predictions served, by model version and route",
            labelnames=("model_version", "route"),
        )
        self.runtime = Runtime(Settings.from_env())
        self.runtime.start()  # returns at once; loading happens in the background

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
        self.predictions.labels(answer.model_version, "predictionForTomorrow").inc()
        threshold += 0.0  # -0.0 -> 0.0
        body = {
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
        # Pre-validated values: skip FastAPI's response-model round trip on the hot path.
        return Response(json.dumps(body), media_type="application/json")

    @app.get("/model", response_model=ModelInfo)
    async def model_info(self) -> Response:
        return JSONResponse(self.runtime.status())

    @bentoml.api
    def predict(self, rows: Annotated[list[FeatureRow], Field(min_length=1, max_length=MAX_ROWS)]) -> list[float]:  # type: ignore[valid-type]
        """P(up) for each feature row (fields = the model's feature columns)."""
        model = self.runtime.model
        if model is None:
            raise ServiceUnavailable(
                f"model not loaded: {self.runtime.status()['last_error'] or 'no model pinned yet'}"
            )
        import pandas as pd

        frame = pd.DataFrame([r.model_dump() for r in rows], columns=list(FEATURE_COLUMNS))
        probs = [float(p) for p in model.p_up(frame)]
        if not all(math.isfinite(p) for p in probs):
            raise InternalServerError("model returned a non-finite probability")
        self.predictions.labels(str(model.version), "predict").inc(len(probs))
        return probs


PrimerService.add_asgi_middleware(JsonOnlyPredict)
