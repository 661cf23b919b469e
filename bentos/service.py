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
import time
from typing import Annotated, Any

import bentoml
import bentoml.exceptions
from bentoml.exceptions import InternalServerError, ServiceUnavailable
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from bentos.live_metrics import LiveMetrics, exposition
from bentos.prediction_log import PredictionLog
from bentos.runtime import Answer, Runtime, log
from contract.names import CHAMPION_ALIAS, MODEL_NAME

DEFAULT_THRESHOLD = 0.5
MAX_ROWS = 1000

# Features are returns and ratios: real values are far below 1. The bound keeps
# them inside float32 (sklearn trees cast to it) so garbage gets a 400, not a 500.
# Strict: JSON true or "0.01" is not a number (lax pydantic would take both).
FEATURE_BOUND = 1e6
_Feature = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-FEATURE_BOUND, le=FEATURE_BOUND)]

# Adaptive batching of POST /predict (BentoML's dispatcher): while one model call runs,
# requests queue and the next call takes them all; one predict_proba costs about the
# same for 1 row as for 1,000 (3-15 ms for the forests). The dispatcher waits for more
# requests only as long as its measured cost model says it pays; MAX_LATENCY_MS bounds
# that and sheds (503) only what could not be answered within the request timeout anyway.
REQUEST_TIMEOUT_S = 10
MAX_LATENCY_MS = REQUEST_TIMEOUT_S * 1000

# Metric labels stay bounded whatever clients send: request paths map to these routes
# (else "other"), and served versions beyond MAX_VERSION_LABELS share one label.
ROUTES = frozenset({
    "/", "/predictionForTomorrow", "/predict", "/model", "/livez", "/readyz", "/healthz", "/metrics",
    "/docs", "/docs.json", "/schema.json", "/openapi.json",
})
OTHER = "other"
MAX_VERSION_LABELS = 32
# Routes whose latency is recorded per served version (what an SRE graphs during a rollout).
TIMED_ROUTES = {"/predictionForTomorrow": "predictionForTomorrow", "/predict": "predict"}


def route_label(path: str) -> str:
    return path if path in ROUTES else OTHER


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


class PredictionLogInfo(BaseModel):
    url: str = Field(description="the store, without credentials")
    pending: int = Field(description="answers queued, not yet in the store")
    written: int = Field(description="answers handed to the store (ones another process recorded first included)")
    dropped: int = Field(description="answers lost because the queue overflowed while the store was down")
    last_error: str | None = Field(description="why the last write failed; null once writing works")


class LiveInfo(BaseModel):
    url: str = Field(description="where the reports are read (the prediction log's database), without credentials")
    model_version: str | None = Field(description="the version the report is about (always the one serving now)")
    as_of: str | None = Field(description="the last scored answer's as_of")
    scored_days: int | None = Field(description="answers of this version scored against the next close")
    log_loss_model: float | None = Field(description="mean log loss of the version's answers, all scored days")
    log_loss_climatology: float | None = Field(description="climatology's mean log loss on the same days")
    worse_than_climatology_p_value: float | None = Field(
        description="one-sided p-value of the gate's paired test that climatology beats the model")
    demotion_warranted: bool | None = Field(description="true when the live evidence says roll this version back")
    drift_alerts: dict[str, bool] | None = Field(description="each drift check (features, up_rate, skew): beyond "
                                                             "its threshold?")
    updated_at: str | None = Field(description="when primer monitor wrote the report")
    read_at: str | None = Field(description="when the service last read it")
    error: str | None = Field(description="why there is no report (none yet, no table, database down); null if read")


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
    prediction_log: PredictionLogInfo | None = Field(description="null when PRIMER_PREDICTION_LOG is empty")
    live: LiveInfo | None = Field(description="the served version's live report from primer monitor (the values "
                                              "/metrics exports); null when PRIMER_PREDICTION_LOG is empty")


class Problem(BaseModel):
    error: str
    detail: Any = None


# FastAPI's own /docs page loads Swagger UI from a CDN, which a lab or an offline laptop
# cannot reach (the page stayed blank): /docs below uses the copy BentoML serves itself.
app = FastAPI(title="primer", description="SPY next-day direction, served from the pinned MLflow version",
              docs_url=None, redoc_url=None)
BENTOML_ASSETS = "/static_content"


@app.get("/docs", include_in_schema=False)
async def api_page() -> Response:
    """Swagger UI of every route (the corrected /docs.json), POST /predict and the probes included."""
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(
        openapi_url="/docs.json", title="primer API",
        swagger_js_url=f"{BENTOML_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{BENTOML_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{BENTOML_ASSETS}/favicon-light-32x32.png",
    )


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
      dependency injection and validation cost more than the answer itself. Every
      other request, including every invalid one and the 503s, is handled by the
      FastAPI route, which also documents the API.
    * ``POST /predict`` takes JSON only (BentoML would try other body parsers and
      answer a malformed Content-Type with a 500), and answers 503 with the reason
      while no model is loaded (BentoML's own 503 says only "unexpected error").
    * ``GET /docs.json`` documents what ``POST /predict`` really answers.
    * Latency of answered predictions is recorded per served version and route.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.service: PrimerService | None = None
        # Here, not in the service's __init__: BentoML builds its middleware stack (so this
        # runs) before the first request, but may answer /livez before the service exists.
        apply_bentoml_fixes()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        service = self.service = self.service or _current_service()
        if scope["type"] != "http" or service is None:
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == "/predictionForTomorrow" and method == "GET":
            if not await self._fast_answer(service, scope, send):
                await self._timed(service, "predictionForTomorrow", scope, receive, send)
        elif path.rstrip("/") == "/predict" and method == "POST":
            ctype = dict(scope.get("headers") or ()).get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                await JSONResponse(status_code=415, content={
                    "error": f"POST /predict needs Content-Type: application/json, got {ctype.decode('latin-1')!r}",
                })(scope, receive, send)
            elif service.runtime.model is None:
                await _unavailable(service.runtime)(scope, receive, send)
            else:
                await self._timed(service, "predict", scope, receive, send)
        elif path == "/docs.json" and method == "GET":
            await JSONResponse(documented_openapi())(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _fast_answer(self, service: PrimerService, scope: Any, send: Any) -> bool:
        m = _FAST_QUERY.fullmatch(scope["query_string"])
        answer = service.runtime.answer
        if m is None or answer is None:
            return False
        started = time.perf_counter()
        service.count_prediction(answer.model_version)
        threshold = float(m.group(1)) if m.group(1) else DEFAULT_THRESHOLD
        body = prediction_body(answer, threshold)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        service.observe_latency("predictionForTomorrow", answer.model_version, time.perf_counter() - started)
        return True

    async def _timed(self, service: PrimerService, route: str, scope: Any, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_and_note)
        model = service.runtime.model
        if 200 <= status < 300 and model is not None:
            service.observe_latency(route, str(model.version), time.perf_counter() - started)


def apply_bentoml_fixes() -> None:
    from bentos.bentoml_fixes import bound_endpoint_labels, cancel_request_timers, quiet_client_errors

    for name, applied in (("request timers", cancel_request_timers()),
                          ("endpoint labels", bound_endpoint_labels(route_label)),
                          ("client-error logs", quiet_client_errors())):
        if not applied:
            log.warning("BentoML changed where bentos/bentoml_fixes.py patches it: %s fix not applied", name)


def documented_openapi() -> dict[str, Any]:
    """BentoML's OpenAPI document, corrected where it misdescribes ``POST /predict``.

    BentoML generates the API's responses itself (there is no ``responses=`` to set): its
    400 carries pydantic's list of errors in ``detail`` (typed there as a string), and the
    415 and 503 this middleware answers are not listed.
    """
    global _OPENAPI
    if _OPENAPI is None:
        from importlib.metadata import version

        spec = PrimerService.openapi_spec.asdict()  # type: ignore[attr-defined]
        spec["info"] = {"title": app.title, "version": version("mlops-primer"), "description": (
            f"{app.description}. `GET /predictionForTomorrow` answers from the published prediction; "
            "`POST /predict` scores your own feature rows (batched); `GET /model` says what is served and why; "
            "`/metrics` for Prometheus. Source: bentos/service.py.")}
        schemas = spec["components"]["schemas"]
        schemas["InvalidArgument"]["properties"]["detail"] = {
            "title": "Error Detail", "type": "array", "items": {"type": "object"},
            "description": "pydantic's errors: loc names the row and field",
        }
        problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        spec["paths"]["/predict"]["post"]["responses"].update({
            "415": {"description": "the body is not sent as application/json", "content": problem},
            "503": {"description": "no model loaded (nothing pinned, or still loading); detail says why",
                    "content": problem},
        })
        _OPENAPI = spec
    return _OPENAPI


_OPENAPI: dict[str, Any] | None = None


def _current_service() -> PrimerService | None:
    try:
        return bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:  # not instantiated yet
        return None


def _unavailable(runtime: Runtime) -> JSONResponse:
    status = runtime.status()
    if status["model_version"] is not None:  # a model, but neither fresh data nor a stored feature row
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
    traffic={"timeout": REQUEST_TIMEOUT_S},
)
@bentoml.asgi_app(app, path="/")
class PrimerService:
    def __init__(self) -> None:
        # Must not import prometheus_client before BentoML set PROMETHEUS_MULTIPROC_DIR
        # (done by the time the instance is created), or /metrics would never show it.
        from prometheus_client import Counter, Histogram

        self.predictions = Counter(
            "primer_predictions",
            "Predictions served (rows for POST /predict), by model version and route",
            labelnames=("model_version", "route"),
        )
        self.latency = Histogram(
            "primer_prediction_duration_seconds",
            "Time to answer a prediction request (2xx only), by the model version that answered and route",
            labelnames=("model_version", "route"),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self._counters: dict[tuple[str, str], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}
        from contract.settings import ServingSettings

        settings = ServingSettings.load()
        self.runtime = Runtime(settings, prediction_log=self._prediction_log(settings.prediction_log))
        if settings.prediction_log:  # primer monitor writes its reports into the same database
            self.runtime.live_metrics = LiveMetrics(settings.prediction_log, settings.live_refresh_seconds,
                                                    self.runtime.served_version)
        self.runtime.start()  # returns at once; loading happens in the background

    def _prediction_log(self, url: str) -> PredictionLog | None:
        """The log of published answers with its metrics, or None when PRIMER_PREDICTION_LOG is empty."""
        if not url:
            return None
        from prometheus_client import Counter, Gauge

        written = Counter("primer_prediction_log_written", "Published answers handed to the prediction log's store")
        dropped = Counter("primer_prediction_log_dropped",
                          "Published answers dropped because the prediction log's queue overflowed")
        pending = Gauge("primer_prediction_log_pending", "Published answers queued for the prediction log's store",
                        multiprocess_mode="livesum")

        def observe(n_written: int, n_dropped: int, n_pending: int) -> None:
            written.inc(n_written)
            dropped.inc(n_dropped)
            pending.set(n_pending)

        return PredictionLog(url, observer=observe)

    def _version_label(self, version: str, known: dict[tuple[str, str], Any]) -> str:
        versions = {v for v, _ in known}
        return version if version in versions or len(versions) < MAX_VERSION_LABELS else OTHER

    def count_prediction(self, version: str, route: str = "predictionForTomorrow", n: int = 1) -> None:
        # labels() takes a lock and a dict lookup; the hot path reuses the child.
        child = self._counters.get((version, route))
        if child is None:
            label = self._version_label(version, self._counters)
            child = self._counters[(version, route)] = self.predictions.labels(label, route)
        child.inc(n)

    def observe_latency(self, route: str, version: str, seconds: float) -> None:
        child = self._timers.get((version, route))
        if child is None:
            label = self._version_label(version, self._timers)
            child = self._timers[(version, route)] = self.latency.labels(label, route)
        child.observe(seconds)

    async def __is_ready__(self) -> bool:
        return self.runtime.ready

    def __metrics__(self, content: str) -> str:
        """BentoML's hook on ``/metrics`` (run in a thread): the served version and its live report.

        Rendered from the published snapshot at scrape time, so a version swapped out stops
        exporting at once (multiprocess gauges cannot drop a label set; see bentos/live_metrics.py).
        """
        live = self.runtime.live_metrics
        return content + exposition(self.runtime.served_version(), live.current() if live is not None else None)

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
        request: Request,
        threshold: Annotated[
            float,
            Query(ge=0.0, le=1.0, allow_inf_nan=False, description="UP when P(up) >= threshold; a number in [0, 1]"),
        ] = DEFAULT_THRESHOLD,
    ) -> Response:
        if len(request.query_params.getlist("threshold")) > 1:  # FastAPI would silently take the last
            return JSONResponse(status_code=422, content={"error": "invalid parameter threshold: given more than once",
                                                          "detail": request.query_params.getlist("threshold")})
        answer = self.runtime.answer  # one read of an immutable snapshot
        if answer is None:
            return _unavailable(self.runtime)
        self.count_prediction(answer.model_version)
        # Values are already valid: skip FastAPI's response-model round trip.
        return Response(prediction_body(answer, threshold), media_type="application/json")

    @app.get("/model", response_model=ModelInfo)
    async def model_info(self) -> Response:
        return JSONResponse(self.runtime.status())

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_ROWS, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, rows: Annotated[list[FeatureRow], Field(min_length=1, max_length=MAX_ROWS)]) -> list[float]:
        """P(up) for each feature row (fields = the model's feature columns), at most 1,000 rows.

        Requests are batched: BentoML's dispatcher passes the rows of every request
        queued while the previous model call ran, and splits the answers back.
        """
        model = self.runtime.model
        if model is None:
            raise ServiceUnavailable(
                f"model not loaded: {self.runtime.status()['last_error'] or 'no model pinned yet'}"
            )
        import pandas as pd

        from ml.features import FEATURE_COLUMNS

        # Field order is FEATURE_COLUMNS' (tests/serving/test_contract.py): plain tuples, no dicts.
        frame = pd.DataFrame.from_records([tuple(vars(r).values()) for r in rows], columns=FEATURE_COLUMNS)
        probs = model.p_up_rows(frame)
        if not all(math.isfinite(p) for p in probs):
            raise InternalServerError("model returned a non-finite probability")
        self.count_prediction(str(model.version), "predict", len(probs))
        return probs


# @bentoml.service turns the class into a Service, which mypy cannot see through.
PrimerService.add_asgi_middleware(PrimerMiddleware)  # type: ignore[attr-defined]
