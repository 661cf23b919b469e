"""What the service serves, kept current by two background threads.

Nothing here imports BentoML, so the logic is importable (and testable) on its own.

* The **model thread** watches the pin file and loads ``models:/spy-direction/<N>``
  from MLflow. A new version is swapped in (one reference assignment) only after
  it loaded completely; a failed load or an invalid pin keeps the old version
  serving and is reported in :meth:`Runtime.status` and the logs. With nothing
  loaded it retries with exponential backoff; the service stays alive, not ready.
* The **feature thread** builds tomorrow's feature row from the configured data
  source, at most once per trading day and TTL. When fresh data cannot be had it
  falls back to the row stored with the model at training time (``stale: true``).
  The trading day is the clock's: today (UTC) in live mode; with ``PRIMER_MODE=replay``
  the replay clock's anchor (:mod:`ml.replay`, the clock training follows), so answers'
  ``as_of`` walk through history one simulated trading day per replay interval.
* The **live report** of the served version (:mod:`bentos.live_metrics`) is re-read by
  a thread of its own, for ``/metrics`` and ``/model``.

Whenever the model or the feature row changes, the P(up) for (version, as_of) is
computed once and published as an immutable :class:`Answer`. A request only
reads that reference: no model work, no data work and no lock on the request path.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bentos.live_metrics import LiveMetrics
from bentos.prediction_log import MAX_BACKOFF_SECONDS, PredictionLog
from contract import prediction_log as logged
from contract.errors import one_line
from contract.names import LATEST_FEATURES_ARTIFACT, MODEL_NAME
from contract.pin import PinError, parse_pin
from contract.registry import public_uri
from contract.settings import ServingSettings, quiet_mlflow
from contract.ui import model_url, model_version_url, ui_base

log = logging.getLogger("bentoml.primer")

# Calendar days of prices fetched for tomorrow's row: WARMUP_ROWS + 5 trading
# days are needed; 60 calendar days cover that across holidays.
LOOKBACK_DAYS = 60


@dataclass(frozen=True)
class LoadedModel:
    version: int
    run_id: str
    estimator: Any  # sklearn estimator with predict_proba
    metrics: dict[str, float]
    loaded_at: str
    stored_row: Any | None  # 1-row DataFrame stored at training time, or None
    stored_as_of: date | None

    def p_up_rows(self, rows: Any) -> list[float]:
        """P(class 1) for each row of a feature frame; the column is looked up, not assumed."""
        classes = list(self.estimator.classes_)
        return [float(p) for p in self.estimator.predict_proba(rows)[:, classes.index(1)]]


@dataclass(frozen=True)
class FetchedRow:
    frame: Any  # 1-row DataFrame with FEATURE_COLUMNS
    as_of: date
    fetched_at: float  # time.monotonic() of the successful fetch
    fetched_day: ClockDay  # the clock's day of the fetch (a new day invalidates the row)


@dataclass(frozen=True)
class Answer:
    """Everything ``/predictionForTomorrow`` needs, computed once per (version, feature row)."""

    model_version: str
    confidence: float
    as_of: str
    stale: bool


# The clock's day: the UTC date in live mode, the replay clock's step in replay mode
# (the step is what moves the anchor; reading the anchor itself needs the data).
ClockDay = date | int


@dataclass
class _Status:
    pin_version: int | None = None
    pin_error: str | None = None
    load_error: str | None = None
    feature_error: str | None = None
    clock_error: str | None = None  # a replay setting that cannot work: reported, not ready
    attempts: int = 0
    next_attempt: float = 0.0


def load_served_model(tracking_uri: str, version: int) -> LoadedModel:
    """Load one registered version with its run's metrics and stored feature row.

    Read over MLflow's REST API (:mod:`bentos.model_store`) when the tracking server
    serves the artifacts, as this project's servers do; else through MLflow's client,
    imported only then (it is the heaviest import by far).
    """
    import pandas as pd

    from bentos.model_store import NotProxied, read_version
    from contract.evidence import METRICS  # imports numpy: not at module level (the supervisor imports us)
    from ml.features import FEATURE_COLUMNS

    try:
        stored = read_version(tracking_uri, version, LATEST_FEATURES_ARTIFACT)
    except NotProxied:
        stored = _read_with_mlflow(tracking_uri, version)
    estimator = stored.estimator
    if not hasattr(estimator, "predict_proba"):
        raise RuntimeError(f"models:/{MODEL_NAME}/{version} is a {type(estimator).__name__} without predict_proba")
    if 1 not in list(getattr(estimator, "classes_", [])):
        classes = getattr(estimator, "classes_", None)
        raise RuntimeError(f"models:/{MODEL_NAME}/{version} was not trained with label 1 (classes {classes})")
    stored_row, stored_as_of = None, None
    try:
        if stored.latest_features is None:
            raise LookupError(stored.features_problem)
        stored_as_of = date.fromisoformat(stored.latest_features["as_of"])
        values = {c: float(stored.latest_features["features"][c]) for c in FEATURE_COLUMNS}
        stored_row = pd.DataFrame([values], columns=list(FEATURE_COLUMNS))
    except Exception as exc:  # the model still serves fresh data; only the fallback is missing
        log.warning("v%s: no usable %s in run %s (%s); no stale fallback", version, LATEST_FEATURES_ARTIFACT,
                    stored.run_id, exc)
    model = LoadedModel(
        version=version,
        run_id=stored.run_id,
        estimator=estimator,
        metrics={k: stored.metrics[k] for k in METRICS if k in stored.metrics},
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        stored_row=stored_row,
        stored_as_of=stored_as_of,
    )
    model.p_up_rows(stored_row if stored_row is not None else _zero_row(FEATURE_COLUMNS))  # fail now, not on a request
    return model


def _read_with_mlflow(tracking_uri: str, version: int) -> Any:
    """The same as :func:`bentos.model_store.read_version`, through MLflow's client (any artifact store)."""
    # Our own loop retries with backoff; MLflow's long internal retries would
    # only hide an unreachable server for minutes.
    quiet_mlflow(fail_fast=True)
    from bentos.model_store import StoredVersion
    from ml.tracking import Tracker

    tracker = Tracker(tracking_uri)
    mv = tracker.client.get_model_version(MODEL_NAME, str(version))
    if not mv.run_id:
        raise RuntimeError(f"models:/{MODEL_NAME}/{version} has no run id; cannot find its metrics and features")
    metrics = {k: float(v) for k, v in tracker.client.get_run(mv.run_id).data.metrics.items()}
    estimator = tracker.load_version(version)
    try:
        features, problem = tracker.latest_features(mv.run_id), None
    except Exception as exc:
        features, problem = None, str(exc)
    return StoredVersion(mv.run_id, metrics, estimator, features, problem)


def _is_replay_config_error(exc: BaseException) -> bool:
    from ml.replay import ReplayConfigError

    return isinstance(exc, ReplayConfigError)


def _zero_row(columns: tuple[str, ...]) -> Any:
    import pandas as pd

    return pd.DataFrame([dict.fromkeys(columns, 0.0)], columns=list(columns))


def fetch_tomorrow_row(data_source: str, today: date) -> tuple[Any, date]:
    """Tomorrow's feature row from recent prices of the configured source."""
    from ml.data import load_prices
    from ml.features import tomorrow_row

    prices = load_prices(data_source, start=today - timedelta(days=LOOKBACK_DAYS), end=today)
    return tomorrow_row(prices)


def fetch_replay_row(data_source: str, clock: Any, now: datetime) -> tuple[Any, date]:
    """Tomorrow's feature row as of the replay clock's anchor (``clock``: an ``ml.replay.ReplayClock``).

    The same window training reads (``ml.pipeline``: prices up to ``load_until``, cut at the
    anchor), so a replayed answer's ``as_of`` is the day the trainer sees as today.
    """
    import pandas as pd

    from ml.data import load_prices
    from ml.features import tomorrow_row

    load_until = min(datetime.now(UTC).date(), clock.load_until(now))
    prices = load_prices(data_source, start=clock.start - timedelta(days=LOOKBACK_DAYS), end=load_until)
    anchor = clock.anchor(prices["date"], now)
    dates = pd.to_datetime(prices["date"])
    keep = (dates <= pd.Timestamp(anchor)) & (dates >= pd.Timestamp(anchor - timedelta(days=LOOKBACK_DAYS)))
    return tomorrow_row(prices.loc[keep].reset_index(drop=True))


@dataclass
class Runtime:
    settings: ServingSettings
    loader: Callable[[str, int], LoadedModel] = load_served_model
    fetcher: Callable[[str, date], tuple[Any, date]] = fetch_tomorrow_row
    replay_fetcher: Callable[[str, Any, datetime], tuple[Any, date]] = fetch_replay_row
    # Published state: each is replaced as a whole, never mutated, so readers need no lock.
    model: LoadedModel | None = None
    features: FetchedRow | None = None
    answer: Answer | None = None
    prediction_log: PredictionLog | None = None  # records each published answer once, off the request path
    live_metrics: LiveMetrics | None = None  # the served version's live report (for /metrics and /model)
    _status: _Status = field(default_factory=_Status)
    _pin_text: str | None = None
    _pin_seen: bool = False
    _p_cache: dict[tuple[int, date, bytes], float] = field(default_factory=dict)  # (version, as_of, row)
    _logged: set[tuple[int, date]] = field(default_factory=set)  # queued by this process (the store dedups too)
    _publish_lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake_features: threading.Event = field(default_factory=threading.Event)
    _first_load_done: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _clock: Any = None  # ml.replay.ReplayClock in replay mode, built by the feature thread

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("primer-model", self._model_loop), ("primer-features", self._feature_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        for helper in (self.prediction_log, self.live_metrics):
            if helper is not None:
                helper.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake_features.set()
        for helper in (self.prediction_log, self.live_metrics):
            if helper is not None:
                helper.stop()

    @property
    def ready(self) -> bool:
        """The pinned model is loaded and the clock can work (a bad replay setting keeps old pods serving)."""
        return self.model is not None and self._status.clock_error is None

    def served_version(self) -> int | None:
        model = self.model
        return model.version if model is not None else None

    # -- model thread --------------------------------------------------------------
    def _model_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_pin()
                self.load_if_needed()
            except Exception:  # never let the watcher die
                log.exception("unexpected error in the pin watcher")
            self._first_load_done.set()
            self._stop.wait(self.settings.pin_poll_seconds)

    def check_pin(self) -> None:
        """Re-read the pin when its content changed (a ConfigMap swaps a symlink; mtime alone is not enough)."""
        if self._pin_seen and not self.settings.pin_watch:
            return  # read once: in the cluster a new pin rolls new pods instead
        path = self.settings.pin_path()
        try:
            text: str | None = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:  # unreadable, or not text: reported, old model kept
            text = None
            missing = f"{path}: cannot read pin file ({one_line(exc)})"
        if self._pin_seen and text == self._pin_text:
            return
        self._pin_seen, self._pin_text = True, text
        st = self._status
        if text is None:
            st.pin_error = missing + self._keeping()
            log.error("%s", st.pin_error)
            self._drop_pending_target()
            return
        try:
            pin = parse_pin(text, str(path))
        except PinError as exc:
            st.pin_error = f"invalid pin ignored: {exc}{self._keeping()}"
            log.error("%s", st.pin_error)
            self._drop_pending_target()
            return
        st.pin_error = None
        if pin.version is None:
            st.pin_error = f"{path}: nothing pinned (version: null){self._keeping()}"
            log.warning("%s", st.pin_error)
        elif pin.version != st.pin_version:
            log.info("pin %s: %s wants version %s", path, MODEL_NAME, pin.version)
        if pin.version != st.pin_version:
            st.pin_version, st.attempts, st.next_attempt, st.load_error = pin.version, 0, 0.0, None

    def _drop_pending_target(self) -> None:
        """A pin that cannot be read no longer asks for the version the last good one named:
        stop retrying a target that was never loaded and keep serving what is loaded."""
        st = self._status
        served = self.model.version if self.model is not None else None
        if st.pin_version != served:
            log.info("no longer loading version %s: the pin that named it was replaced", st.pin_version)
            st.pin_version, st.attempts, st.next_attempt, st.load_error = served, 0, 0.0, None

    def _keeping(self) -> str:
        return f"; still serving version {self.model.version}" if self.model else "; no model loaded"

    def load_if_needed(self) -> None:
        st = self._status
        wanted = st.pin_version
        if wanted is None or (self.model is not None and self.model.version == wanted):
            return
        if time.monotonic() < st.next_attempt:
            return
        st.attempts += 1
        log.info("loading models:/%s/%s from %s (attempt %d)", MODEL_NAME, wanted, self.settings.tracking_uri,
                 st.attempts)
        started = time.monotonic()
        try:
            model = self.loader(self.settings.tracking_uri, wanted)
        except Exception as exc:
            delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(st.attempts, 10))
            st.next_attempt = time.monotonic() + delay
            st.load_error = (f"loading models:/{MODEL_NAME}/{wanted} failed: {one_line(exc)}{self._keeping()}; "
                             f"retrying in {delay:.0f}s")
            log.error("%s", st.load_error)
            return
        if st.pin_version != wanted:  # the pin moved on while we loaded: try again with the new one
            return
        previous = self.model
        self.model = model  # the atomic swap: requests see the old or the new model, never half of one
        st.load_error, st.attempts = None, 0
        # MLflow, sklearn and the model are ~250k long-lived objects: a full collection
        # walks them all (~250 ms, a p99 spike under load). Collect once now and move
        # the survivors out of the collector's view; refcounting still frees them.
        gc.collect()
        gc.freeze()
        log.info(
            "serving models:/%s/%s (run %s, loaded in %.1fs)%s", MODEL_NAME, wanted, model.run_id,
            time.monotonic() - started, f", replaced version {previous.version}" if previous else "",
        )
        self.publish()

    # -- feature thread ------------------------------------------------------------
    def features_fresh(self, now: float | None = None, today: ClockDay | None = None) -> bool:
        row = self.features
        if row is None:
            return False
        now = time.monotonic() if now is None else now
        today = self.clock_day() if today is None else today
        return row.fetched_day == today and now - row.fetched_at <= self.settings.feature_ttl_seconds

    def clock_day(self, now: datetime | None = None) -> ClockDay:
        """The UTC day (live), or the replay clock's step (replay; -1 while the clock cannot work)."""
        now = datetime.now(UTC) if now is None else now
        if self.settings.mode != "replay":
            return now.date()
        clock = self.replay_clock()
        return clock.steps(now) if clock is not None else -1

    def replay_clock(self) -> Any:
        """The replay clock of the settings (built once), or None with the reason in ``clock_error``."""
        if self._clock is None and self._status.clock_error is None:
            from ml.replay import ReplayConfigError, clock_from_settings  # pandas: not in the supervisor

            try:
                self._clock = clock_from_settings(self.settings)
            except ReplayConfigError as exc:
                self._status.clock_error = f"PRIMER_MODE=replay: {exc}"
                log.error("%s; not ready", self._status.clock_error)
        return self._clock

    def _feature_loop(self) -> None:
        # Readiness waits for the model, not for market data: let the model's
        # (import-heavy) first load have the CPU, then fetch.
        self._first_load_done.wait(15)
        failures = 0
        next_try = 0.0
        while not self._stop.is_set():
            try:
                if not self.features_fresh() and time.monotonic() >= next_try:
                    if self.refresh_features():
                        failures = 0
                    else:
                        failures += 1
                        next_try = time.monotonic() + min(
                            self.settings.feature_ttl_seconds, MAX_BACKOFF_SECONDS, 2.0 * 2 ** min(failures, 10)
                        )
                    self.publish()  # a fresh row, or an expired one now flagged stale
            except Exception:
                log.exception("unexpected error in the feature refresher")
            self._wake_features.wait(1.0)
            self._wake_features.clear()

    def refresh_features(self) -> bool:
        now = datetime.now(UTC)
        today = self.clock_day(now)
        try:
            if self.settings.mode == "replay":
                clock = self.replay_clock()
                if clock is None:
                    raise RuntimeError(self._status.clock_error)
                frame, as_of = self.replay_fetcher(self.settings.data_spec(), clock, now)
            else:
                frame, as_of = self.fetcher(self.settings.data_spec(), now.date())
        except Exception as exc:
            self._status.feature_error = f"fetching prices from {self.settings.data_source!r} failed: {one_line(exc)}"
            if self._clock is not None and _is_replay_config_error(exc):  # e.g. PRIMER_REPLAY_START past the data
                self._status.clock_error = f"PRIMER_MODE=replay: {one_line(exc)}"
            log.warning("%s; serving the last known feature row (stale)", self._status.feature_error)
            return False
        if self._clock is not None:
            self._status.clock_error = None  # the clock found its day in the data
        self.features = FetchedRow(frame=frame, as_of=as_of, fetched_at=time.monotonic(), fetched_day=today)
        self._status.feature_error = None
        log.info("features for tomorrow as of %s from %s", as_of, self.settings.data_source)
        return True

    # -- the published answer --------------------------------------------------------
    def publish(self) -> None:
        """Recompute the answer for the current model and feature row (cached per version and row)."""
        with self._publish_lock:  # only the two background threads take it; requests never do
            model = self.model
            if model is None:
                self.answer = None
                return
            fresh = self.features_fresh()
            candidates = []
            if self.features is not None:
                candidates.append((self.features.as_of, self.features.frame))
            if model.stored_row is not None and model.stored_as_of is not None:
                candidates.append((model.stored_as_of, model.stored_row))
            if not candidates:
                self.answer = None
                return
            # Fresh data if we have it, else the most recent row we know.
            as_of, frame = candidates[0] if fresh else max(candidates, key=lambda c: c[0])
            # The row's values are part of the key: a fresh row can share its date with the
            # stored one and still differ (another data source), and must then be scored.
            key = (model.version, as_of, frame.to_numpy().tobytes())
            if key not in self._p_cache:
                self._p_cache = {k: v for k, v in self._p_cache.items() if k[0] == model.version}
                self._p_cache[key] = model.p_up_rows(frame)[0]
            self.answer = Answer(
                model_version=str(model.version),
                confidence=self._p_cache[key],
                as_of=as_of.isoformat(),
                stale=not fresh,
            )
            self._record(model.version, as_of, frame, self.answer)

    def _record(self, version: int, as_of: date, frame: Any, answer: Answer) -> None:
        """Queue the answer for the prediction log, once per (version, as_of) in this process."""
        if self.prediction_log is None or (version, as_of) in self._logged:
            return
        self._logged = {k for k in self._logged if k[0] == version} | {(version, as_of)}
        row = {str(column): float(value) for column, value in frame.iloc[0].items()}
        self.prediction_log.record({
            logged.MODEL_VERSION: version, logged.AS_OF: as_of, logged.P_UP: answer.confidence,
            logged.STALE: answer.stale, logged.FEATURES: json.dumps(row),
            logged.PUBLISHED_AT: datetime.now(UTC), logged.HOST: socket.gethostname(), logged.PID: os.getpid(),
        })

    # -- reporting -----------------------------------------------------------------
    def _ui_link(self, version: int | None) -> str | None:
        """The served version's page in the MLflow UI (machine-learning view), else the model's."""
        ui = ui_base(self.settings.tracking_uri)
        if ui is None:
            return None
        return model_version_url(ui, MODEL_NAME, version) if version else model_url(ui, MODEL_NAME)

    def status(self) -> dict[str, Any]:
        model, st, answer = self.model, self._status, self.answer
        errors = [e for e in (st.pin_error, st.load_error, st.clock_error) if e]
        return {
            "model_name": MODEL_NAME,
            "model_version": str(model.version) if model else None,
            "run_id": model.run_id if model else None,
            "metrics": model.metrics if model else {},
            "loaded_at": model.loaded_at if model else None,
            "ready": self.ready,
            "last_error": "; ".join(errors) if errors else None,
            "pin_source": str(self.settings.pin_path()),
            "pinned_version": str(st.pin_version) if st.pin_version is not None else None,
            "tracking_uri": public_uri(self.settings.tracking_uri),  # /model is public
            "mlflow_ui": self._ui_link(model.version if model else None),
            "data_source": self.settings.data_source,
            "as_of": answer.as_of if answer else None,
            "stale": answer.stale if answer else None,
            "feature_error": st.feature_error,
            "prediction_log": self.prediction_log.status() if self.prediction_log is not None else None,
            "live": self.live_metrics.status() if self.live_metrics is not None else None,
        }
