"""Records every published answer in the prediction log, off the request path.

:meth:`PredictionLog.record` only appends to a bounded in-memory queue (the caller is
the runtime's publishing thread, never a request). A background thread writes the queue
in batches with ``INSERT ... ON CONFLICT DO NOTHING`` on (model_version, as_of), so two
processes or a restart never duplicate a row. When the store is down the entries stay
queued and the thread retries with backoff; if the queue overflows, the oldest entries
are dropped and counted. The schema is :mod:`contract.prediction_log`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from contract import prediction_log as schema
from contract.errors import one_line
from contract.registry import public_uri

log = logging.getLogger("bentoml.primer")

QUEUE_CAPACITY = 10_000  # a day's answers are a handful: this is weeks of an unreachable store
BATCH_SIZE = 500
MAX_BACKOFF_SECONDS = 30.0  # the service's longest wait between retries (model loads, fetches, the log)
FIRST_BACKOFF_SECONDS = 0.5

# (written, dropped, pending): entries newly in the store, newly dropped, and still queued.
Observer = Callable[[int, int, int], None]


class PredictionLog:
    """A queue of log entries (dicts keyed by :mod:`contract.prediction_log`'s columns) and its writer."""

    def __init__(self, url: str, *, capacity: int = QUEUE_CAPACITY, observer: Observer | None = None) -> None:
        self.url = url
        self.capacity = capacity
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._observer = observer
        self._queue: deque[tuple[int, dict[str, Any]]] = deque()  # (sequence number, entry)
        self._seq = itertools.count()
        self._lock = threading.Lock()  # guards the queue: the publisher appends, the writer removes
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: Any = None
        self._table: Any = None

    @property
    def pending(self) -> int:
        return len(self._queue)

    def record(self, entry: dict[str, Any]) -> None:
        """Queue one entry; never blocks on the store. A full queue drops (and counts) its oldest."""
        with self._lock:
            dropped = 0
            while len(self._queue) >= self.capacity:
                self._queue.popleft()
                dropped += 1
            self._queue.append((next(self._seq), entry))
            self.dropped += dropped
            pending = len(self._queue)
        if dropped:
            log.warning("prediction log: queue full (%d), dropped the oldest %d entries", self.capacity, dropped)
        self._notify(0, dropped, pending)
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {"url": public_uri(self.url), "pending": self.pending, "written": self.written,
                "dropped": self.dropped, "last_error": self.last_error}

    # -- the writer thread ---------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="primer-prediction-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            if self.flush():
                backoff = 0.0
                self._wake.wait(1.0)
                self._wake.clear()
            else:  # the store is down: keep the entries, try again later
                backoff = min(MAX_BACKOFF_SECONDS, max(FIRST_BACKOFF_SECONDS, backoff * 2))
                self._stop.wait(backoff)
        self.flush()  # a last attempt on shutdown; what still fails is lost with the process

    def flush(self) -> bool:
        """Write everything queued, batch by batch; False (entries kept, error noted) if the store fails."""
        while True:
            with self._lock:
                batch = list(itertools.islice(self._queue, BATCH_SIZE))
            if not batch:
                return True
            try:
                self._write([entry for _, entry in batch])
            except Exception as exc:  # any failure of the store: the entries wait for the next attempt
                if self.last_error is None:
                    log.warning("prediction log %s: write failed, %d entries kept for a retry: %s",
                                public_uri(self.url), self.pending, one_line(exc))
                self.last_error = one_line(exc)
                return False
            last = batch[-1][0]
            with self._lock:  # entries dropped meanwhile are gone from the head: remove only what was written
                while self._queue and self._queue[0][0] <= last:
                    self._queue.popleft()
                pending = len(self._queue)
            self.written += len(batch)
            if self.last_error is not None:
                log.info("prediction log %s: writing again", public_uri(self.url))
            self.last_error = None
            self._notify(len(batch), 0, pending)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        # Imported here, in the writer thread: SQLAlchemy must not slow the service's start.
        from sqlalchemy import MetaData, create_engine

        if self._engine is None:
            self._engine = create_engine(self.url, pool_pre_ping=True)
        if self._table is None:
            table = schema.table(MetaData())
            table.create(self._engine, checkfirst=True)
            self._table = table
        with self._engine.begin() as conn:
            conn.execute(_insert_ignoring_duplicates(self._engine.dialect.name, self._table), rows)

    def _notify(self, written: int, dropped: int, pending: int) -> None:
        if self._observer is not None:
            try:
                self._observer(written, dropped, pending)
            except Exception:  # metrics must never break the log
                log.exception("prediction log observer failed")


def _insert_ignoring_duplicates(dialect: str, table: Any) -> Any:
    """``INSERT ... ON CONFLICT (model_version, as_of) DO NOTHING`` in the store's dialect."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    else:
        raise RuntimeError(f"prediction log: unsupported database {dialect!r} (use sqlite:// or postgresql://)")
    return insert(table).on_conflict_do_nothing(index_elements=list(schema.KEY))
