"""The BentoML service over HTTP: real MLflow, models from the real pipeline, real `bentoml serve`.

The tests in this module share one service and run in file order: it starts with
nothing pinned, then the tests pin, re-pin and break the pin through the file.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from contract.names import MODEL_NAME
from tests.serving.conftest import Registered
from tests.support import Service, console_script, free_port, scrubbed_env, start_service, write_pin_text

PREDICTION_KEYS = {
    "prediction": str, "confidence": float, "threshold": float, "model_source": str, "model_alias": str,
    "model_name": str, "model_version": str, "as_of": str, "stale": bool,
}
ROW = {
    "ret_1": 0.004, "ma3_ratio": 0.002, "ma5_ratio": 0.003, "vol_3": 0.008, "ret_5": 0.01,
    "ma20_ratio": 0.02, "vol_10": 0.009, "range_pct": 0.012, "volume_ratio": -0.1,
}


def _tomorrow_row() -> tuple[object, date]:
    """Tomorrow's row as the service should compute it (synthetic source, same window)."""
    from bentos.runtime import LOOKBACK_DAYS
    from ml.data import load_prices
    from ml.features import tomorrow_row

    today = datetime.now(UTC).date()
    return tomorrow_row(load_prices("synthetic", start=today - timedelta(days=LOOKBACK_DAYS), end=today))


def _p_up(model: object, frame: object) -> list[float]:
    classes = list(model.classes_)  # type: ignore[attr-defined]
    return [float(p) for p in model.predict_proba(frame)[:, classes.index(1)]]  # type: ignore[attr-defined]


# -- nothing pinned yet ----------------------------------------------------------------

def test_alive_but_not_ready_before_a_pin(service: Service) -> None:
    assert service.get("/livez").status_code == 200
    assert service.get("/readyz").status_code == 503
    r = service.get("/predictionForTomorrow", params={"threshold": 0.3})
    assert r.status_code == 503
    assert "nothing pinned" in r.json()["error"]
    r = service.post("/predict", json={"rows": [ROW]})
    assert r.status_code == 503 and "model not loaded" in r.json()["error"] and "nothing pinned" in r.json()["error"]
    info = service.model()
    assert info["ready"] is False and info["model_version"] is None
    assert "nothing pinned" in info["last_error"]
    assert info["pin_source"] == str(service.pin)


# -- pinned ------------------------------------------------------------------------------

def test_ready_once_the_pinned_version_is_loaded(service: Service, registered: Registered) -> None:
    from mlflow import MlflowClient

    write_pin_text(service.pin, registered.first)
    info = service.wait_model(lambda i: i["ready"], what=f"v{registered.first} to load")
    assert service.get("/readyz").status_code == 200
    mv = MlflowClient(tracking_uri=registered.uri).get_model_version(MODEL_NAME, str(registered.first))
    assert info["model_version"] == str(registered.first)
    assert info["run_id"] == mv.run_id
    assert info["last_error"] is None
    assert {"accuracy", "balanced_accuracy", "roc_auc", "log_loss", "brier"} <= set(info["metrics"])
    datetime.fromisoformat(info["loaded_at"])


def test_prediction_keys_types_and_value(service: Service, registered: Registered, local_model: object) -> None:
    # Fresh synthetic features arrive within a second of start; wait for them, not for a fallback.
    service.wait_model(lambda i: i["stale"] is False and i["model_version"] == str(registered.first),
                       what="fresh features")
    r = service.get("/predictionForTomorrow", params={"threshold": "0.3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == set(PREDICTION_KEYS)
    for key, typ in PREDICTION_KEYS.items():
        assert type(body[key]) is typ, (key, body[key])
    assert body["model_source"] == "mlflow" and body["model_alias"] == "champion"
    assert body["model_name"] == MODEL_NAME and body["model_version"] == str(registered.first)
    assert body["threshold"] == 0.3 and body["stale"] is False
    assert body["prediction"] == ("UP" if body["confidence"] >= 0.3 else "DOWN")
    # The confidence is the model's real P(up) on tomorrow's row, not a placeholder.
    frame, as_of = _tomorrow_row()
    assert body["as_of"] == as_of.isoformat()
    assert body["confidence"] == pytest.approx(_p_up(local_model, frame)[0], abs=1e-9)
    assert 0.0 <= body["confidence"] <= 1.0


def test_threshold_flips_the_direction(service: Service) -> None:
    def ask(threshold: float | None) -> dict:
        r = service.get("/predictionForTomorrow", params={} if threshold is None else {"threshold": threshold})
        assert r.status_code == 200, r.text
        return r.json()

    conf = ask(0.0)["confidence"]
    assert ask(0.0)["prediction"] == "UP"
    assert ask(1.0)["prediction"] == ("UP" if conf == 1.0 else "DOWN")
    assert ask(conf)["prediction"] == "UP"  # documented: UP iff confidence >= threshold
    if conf < 1.0:
        assert ask(min(1.0, conf + 1e-6))["prediction"] == "DOWN"
    default = ask(None)
    assert default["threshold"] == 0.5
    assert default["prediction"] == ("UP" if conf >= 0.5 else "DOWN")


def test_fast_path_and_fastapi_route_answer_alike(service: Service) -> None:
    """`threshold=0.5` takes the middleware's fast path; `.5` and extra parameters go through FastAPI."""
    fast = service.get("/predictionForTomorrow?threshold=0.5")
    for query in ("threshold=.5", "threshold=0.5&other=1", "threshold=5e-1"):
        slow = service.get(f"/predictionForTomorrow?{query}")
        assert slow.status_code == 200, (query, slow.text)
        assert slow.json() == fast.json(), query
    assert service.get("/predictionForTomorrow").json() == fast.json()


@pytest.mark.parametrize("bad", ["abc", "NaN", "nan", "inf", "-inf", "-0.1", "1.5", "", "0.5x", "1e309"])
def test_bad_threshold_is_a_4xx_naming_the_parameter(service: Service, bad: str) -> None:
    r = service.get("/predictionForTomorrow", params={"threshold": bad})
    assert 400 <= r.status_code < 500, (bad, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert "threshold" in r.json()["error"]


def test_predict_api_returns_p_up_per_row(service: Service, local_model: object) -> None:
    import pandas as pd

    from ml.features import FEATURE_COLUMNS

    rows = [ROW, {**ROW, "ret_1": -0.03, "vol_10": 0.03}]
    r = service.post("/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    expected = _p_up(local_model, pd.DataFrame(rows, columns=list(FEATURE_COLUMNS)))
    assert r.json() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "payload",
    [
        {"rows": []},
        {"rows": [{k: v for k, v in ROW.items() if k != "ret_1"}]},
        {"rows": [{**ROW, "extra": 1.0}]},
        {"rows": [{**ROW, "ret_1": "NaN"}]},
        {"rows": [{**ROW, "ret_1": "text"}]},
        {"rows": [{**ROW, "ret_1": 1e300}]},
        {"rows": [{**ROW, "ret_1": True}]},
        {"rows": [{**ROW, "ret_1": "0.01"}]},
        {"rows": [ROW] * 1001},
        {"rows": ROW},
        {},
    ],
    ids=["empty", "missing-field", "extra-field", "nan", "text", "huge", "bool", "numeric-string", "too-many",
         "not-a-list", "no-rows"],
)
def test_predict_api_rejects_invalid_rows(service: Service, payload: dict) -> None:
    r = service.post("/predict", json=payload)
    assert r.status_code == 400, (payload, r.status_code, r.text)


def test_client_errors_are_answered_not_logged_as_server_errors(service: Service) -> None:
    """A 4xx is the client's fault: one access-log line, no ERROR with a traceback (BentoML
    logged ~2 KB per invalid body, so any client could fill the disk)."""
    start = service.log.stat().st_size
    for payload in ({"rows": []}, {"rows": [{**ROW, "ret_1": "x"}]}, {"rows": ROW}):
        for _ in range(10):
            assert service.post("/predict", json=payload).status_code == 400
    assert service.post("/predict", content=b'{"rows": [', headers={"content-type": "application/json"}
                        ).status_code == 400
    assert service.get("/predictionForTomorrow?threshold=2").status_code == 422
    with open(service.log, "rb") as log:
        log.seek(start)
        new = log.read().decode(errors="replace")
    assert new.count("/predict") >= 31, new[-2000:]  # the access log saw them
    assert "Traceback" not in new and "[ERROR]" not in new, new[-3000:]


def test_repeated_threshold_is_rejected(service: Service) -> None:
    r = service.get("/predictionForTomorrow?threshold=0.3&threshold=0.9")
    assert r.status_code == 422 and "more than once" in r.json()["error"]


def test_metrics_labels_stay_bounded_whatever_the_paths(service: Service) -> None:
    """Each distinct request path used to add series to /metrics for good (5,000 random paths:
    18.7 MB, 8.8 s per scrape). Paths map to the known routes or "other"."""
    import random
    import string

    from bentos.service import OTHER, ROUTES

    def size_and_endpoints() -> tuple[int, set[str]]:
        text = service.get("/metrics").text
        return len(text), set(re.findall(r'endpoint="([^"]*)"', text))

    rnd = random.Random(12)
    for _ in range(20):  # warm-up: the "other" series exist after this
        service.get("/" + "".join(rnd.choices(string.ascii_letters, k=10)))
    before, _ = size_and_endpoints()
    for i in range(400):
        path = "/" + "/".join("".join(rnd.choices(string.ascii_letters + "%._-", k=8)) for _ in range(1 + i % 3))
        assert service.get(path).status_code in (404, 405)
        service.post(path + "?q=" + str(i), json={})
    after, endpoints = size_and_endpoints()
    assert endpoints <= ROUTES | {OTHER}, sorted(endpoints - ROUTES)[:10]
    assert after <= before * 1.05, (before, after)


def test_every_served_route_has_its_own_metric_label(service: Service) -> None:
    """bentos.service.ROUTES lists the routes by hand: each route the service documents keeps its
    own `endpoint` label instead of falling into "other"."""
    from bentos.service import ROUTES

    documented = set(service.get("/docs.json").json()["paths"]) | {"/docs", "/docs.json", "/"}
    assert documented <= ROUTES, sorted(documented - ROUTES)


def test_predict_api_needs_json(service: Service) -> None:
    r = service.post("/predict", content=b'{"rows": []}', headers={"content-type": "multipart/form-data"})
    assert r.status_code == 415


def test_concurrent_predict_requests_are_batched_and_get_their_own_answers(
        service: Service, registered: Registered, local_model: object) -> None:
    """POST /predict is a batchable BentoML API: concurrent requests share model calls, and
    each gets exactly the answers for its own rows back."""
    import asyncio

    import httpx
    import pandas as pd

    from ml.features import FEATURE_COLUMNS

    requests = [[{**ROW, "ret_1": 0.001 * i, "vol_10": 0.001 * j} for j in range(1 + i % 4)] for i in range(48)]

    def batched() -> tuple[float, float]:
        text = service.get("/metrics").text
        sums = re.findall(r'adaptive_batch_size_(sum|count)\{[^}]*method_name="predict"[^}]*\} ([0-9.e+]+)', text)
        total = {k: float(v) for k, v in sums}
        return total.get("sum", 0.0), total.get("count", 0.0)

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/predict", json={"rows": rows}) for rows in requests))

    calls_before, batches_before = batched()
    answers = asyncio.run(send_all())
    for rows, r in zip(requests, answers, strict=True):
        assert r.status_code == 200, r.text
        expected = _p_up(local_model, pd.DataFrame(rows, columns=list(FEATURE_COLUMNS)))
        assert r.json() == pytest.approx(expected, abs=1e-12)
    calls, batches = batched()
    assert calls - calls_before == len(requests)  # every request went through the dispatcher
    assert 1 <= batches - batches_before <= len(requests)


def test_metrics_count_predictions_by_version(service: Service, registered: Registered) -> None:
    def count() -> float:
        text = service.get("/metrics").text
        m = re.search(
            rf'primer_predictions_total{{model_version="{registered.first}",route="predictionForTomorrow"}} '
            r'([0-9.e+]+)', text
        )
        return float(m.group(1)) if m else 0.0

    def timed(route: str) -> float:
        m = re.search(rf'primer_prediction_duration_seconds_count{{model_version="{registered.first}",'
                      rf'route="{route}"}} ([0-9.e+]+)', service.get("/metrics").text)
        return float(m.group(1)) if m else 0.0

    before, get_before, post_before = count(), timed("predictionForTomorrow"), timed("predict")
    for _ in range(3):
        assert service.get("/predictionForTomorrow").status_code == 200
    assert service.get("/predictionForTomorrow?threshold=0.70").status_code == 200  # the FastAPI route
    for _ in range(2):
        assert service.post("/predict", json={"rows": [ROW, ROW]}).status_code == 200
    assert service.post("/predict", json={"rows": []}).status_code == 400  # errors are not timed
    assert count() == before + 4
    # The latency histogram an SRE graphs during a rollout: per served version and route.
    assert (timed("predictionForTomorrow"), timed("predict")) == (get_before + 4, post_before + 2)
    assert "bentoml_service_request_total" in service.get("/metrics").text


# -- pin changes -------------------------------------------------------------------------

def test_pin_change_serves_the_new_version_without_restart(service: Service, registered: Registered) -> None:
    pid = service.proc.pid
    write_pin_text(service.pin, registered.second)
    info = service.wait_model(lambda i: i["model_version"] == str(registered.second),
                              what=f"swap to v{registered.second}")
    assert info["ready"] is True and info["last_error"] is None
    assert service.proc.poll() is None and service.proc.pid == pid
    body = service.get("/predictionForTomorrow").json()
    assert body["model_version"] == str(registered.second)


@pytest.mark.parametrize(
    ("pin_text", "reported"),
    [
        ("model: spy-direction\nversion: [1, 2\n", "YAML syntax error"),
        ("model: spy-direction\nversion: 1\nextra: true\n", "unknown key"),
        ("model: other-model\nversion: 1\n", "field 'model'"),
        ("model: spy-direction\nversion: 9999\n", "spy-direction/9999"),
    ],
    ids=["garbage-yaml", "unknown-key", "wrong-model", "missing-version"],
)
def test_bad_pin_keeps_the_old_version_serving(
    service: Service, registered: Registered, pin_text: str, reported: str
) -> None:
    serving = str(registered.second)
    write_pin_text(service.pin, registered.second)
    service.wait_model(lambda i: i["model_version"] == serving and i["last_error"] is None, what="a clean state")
    write_pin_text(service.pin, pin_text)
    info = service.wait_model(lambda i: reported in (i["last_error"] or ""), what=f"{reported!r} in last_error")
    assert info["ready"] is True and info["model_version"] == serving
    assert f"still serving version {serving}" in info["last_error"]
    assert service.get("/readyz").status_code == 200
    r = service.get("/predictionForTomorrow")
    assert r.status_code == 200 and r.json()["model_version"] == serving
    assert reported in service.log_tail(100_000)  # the logs say why, too
    # Back to a good pin: the error clears.
    write_pin_text(service.pin, registered.second)
    service.wait_model(lambda i: i["last_error"] is None, what="the error to clear")


CONFORMANCE_CHECKS = ",".join((
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
))


def test_fuzz_openapi_schema_no_server_errors(service: Service, registered: Registered, tmp_path: Path) -> None:
    """schemathesis over every operation of /docs.json (with a model loaded): >= 500 cases, no 5xx,
    and every answer is one the schema documents (status code, content type, body)."""
    write_pin_text(service.pin, registered.second)
    service.wait_model(lambda i: i["ready"] and i["last_error"] is None, what="a loaded model")
    schema = service.get("/docs.json").json()
    # The served document as it is: BentoML's own one typed the 400's `detail` as a string
    # (it is pydantic's list of errors) and listed neither the 415 nor the 503.
    predict = schema["paths"]["/predict"]["post"]["responses"]
    assert {"400", "415", "503"} <= set(predict), list(predict)
    (tmp_path / "openapi.json").write_text(json.dumps(schema))
    res = subprocess.run(
        [
            console_script("st"), "run", "openapi.json", "--url", service.url,
            "--checks", CONFORMANCE_CHECKS,
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "150",
            "--workers", "2",
            "--seed", "20261126",
            "--no-color",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    m = re.search(r"(\d+) generated", out)
    assert m, out[-3000:]
    assert int(m.group(1)) >= 500, out[-3000:]


# -- other configurations: their own short-lived service ---------------------------------

def test_stale_fallback_when_fresh_data_cannot_be_had(registered: Registered, tmp_path: Path) -> None:
    """A data source that fails: the row stored with the model at training time answers, marked stale."""
    from mlflow import MlflowClient

    from ml.tracking import Tracker

    with start_service(tmp_path, registered.uri, registered.first,
                       PRIMER_DATA_SOURCE=f"csv:{tmp_path / 'missing.csv'}") as svc:
        info = svc.wait_model(lambda i: i["ready"] and i["feature_error"], what="a failed fetch")
        run_id = MlflowClient(tracking_uri=registered.uri).get_model_version(MODEL_NAME, str(registered.first)).run_id
        stored = Tracker(registered.uri).latest_features(run_id)
        assert info["stale"] is True
        body = svc.get("/predictionForTomorrow").json()
        assert body["stale"] is True and body["as_of"] == stored["as_of"]
        assert math.isfinite(body["confidence"])


def test_mlflow_unreachable_stays_alive_not_ready(registered: Registered, tmp_path: Path) -> None:
    with start_service(tmp_path, f"http://127.0.0.1:{free_port()}", registered.first) as svc:
        info = svc.wait_model(lambda i: i["last_error"] and "failed" in i["last_error"], what="a load failure")
        assert info["ready"] is False and info["model_version"] is None
        assert "retrying" in info["last_error"]
        assert svc.get("/livez").status_code == 200
        assert svc.get("/readyz").status_code == 503
        assert svc.get("/predictionForTomorrow").status_code == 503


def test_primer_serve_answers_the_seed_curl(registered: Registered, tmp_path: Path) -> None:
    """`primer serve` (the CLI) starts the same service; the seed's curl gets every key."""
    with start_service(tmp_path, registered.uri, registered.first, primer_serve=True, wait_for="/readyz") as svc:
        r = svc.get("/predictionForTomorrow?threshold=0.3")
        assert r.status_code == 200, r.text
        assert set(r.json()) == set(PREDICTION_KEYS)
        assert r.json()["model_version"] == str(registered.first)
        # No wrapper left holding memory: the process `primer serve` started is BentoML's
        # supervisor, with neither numpy, pandas nor SQLAlchemy mapped; only its worker loads them.
        import psutil

        def maps(pid: int) -> str:
            return Path(f"/proc/{pid}/maps").read_text()

        root = psutil.Process(svc.proc.pid)
        assert "bentoml" in " ".join(root.cmdline()[:2]), root.cmdline()
        supervisor = maps(root.pid)
        assert [m for m in ("/numpy/", "/pandas/", "/sqlalchemy/") if m in supervisor] == []
        workers = root.children(recursive=True)
        assert len(workers) == 1 and "/pandas/" in maps(workers[0].pid)


def _predictions(svc: Service, version: int) -> float:
    m = re.search(rf'primer_predictions_total{{model_version="{version}",route="predictionForTomorrow"}} '
                  r"([0-9.e+]+)", svc.get("/metrics").text)
    return float(m.group(1)) if m else 0.0


def test_two_primer_serves_on_one_host_keep_their_own_metrics(registered: Registered, tmp_path: Path) -> None:
    """Same user, same HOME, no BENTOML_HOME: BentoML empties <home>/prometheus_multiproc_dir when it
    starts, so a second service used to wipe the first one's counters (804 answers reported as 4)."""
    shared = {"HOME": str(tmp_path / "home"), "BENTOML_HOME": None}
    with start_service(tmp_path / "a", registered.uri, registered.first, primer_serve=True, wait_for="/readyz",
                       **shared) as first:
        for _ in range(20):
            assert first.get("/predictionForTomorrow").status_code == 200
        assert _predictions(first, registered.first) == 20
        with start_service(tmp_path / "b", registered.uri, registered.first, primer_serve=True,
                           wait_for="/readyz", **shared) as second:
            for _ in range(5):
                assert second.get("/predictionForTomorrow").status_code == 200
            assert _predictions(first, registered.first) == 20
            assert _predictions(second, registered.first) == 5


def test_primer_serve_names_a_busy_port(tmp_path: Path) -> None:
    """Like `primer up`: the port and the option to change it, not BentoML's traceback."""
    import socket

    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        r = subprocess.run([console_script("primer"), "serve", "--port", str(port)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert f"port {port} is already in use" in r.stderr and "--port" in r.stderr
    assert "Traceback" not in r.stderr


def test_primer_status_reports_drift_against_the_real_service(registered: Registered, tmp_path: Path) -> None:
    """`primer status` compares git's pin with what a running service reports on GET /model."""
    with start_service(tmp_path / "svc", registered.uri, registered.first) as svc:
        svc.wait_model(lambda m: m["model_version"] == str(registered.first), what="the first version loaded")
        # What the repository pins (ahead of the service).
        git_pin = write_pin_text(tmp_path / "git" / "model-version.yaml", registered.second)
        env = scrubbed_env(keep=("PRIMER_REPO_DIR",), MLFLOW_TRACKING_URI=registered.uri, PRIMER_PIN_FILE=str(git_pin))

        def primer(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([console_script("primer"), *args], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=120)

        assert primer("registry", "sync").returncode == 0  # the champion alias follows git: no alias drift
        status = primer("status", "--service-url", svc.url, "--strict")
        assert status.returncode == 1, status.stdout + status.stderr
        assert (f"DRIFT: service at {svc.url} serves v{registered.first} but git pins v{registered.second}"
                in status.stdout), status.stdout

        write_pin_text(svc.pin, registered.second)  # the rollout reaches the service
        svc.wait_model(lambda m: m["model_version"] == str(registered.second), what="the swap")
        status = primer("status", "--service-url", svc.url, "--strict")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"service:              v{registered.second}" in status.stdout and "in sync" in status.stdout
