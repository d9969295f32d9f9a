"""A background writer: hook calls hand over records to store and answer at once; one thread commits in batches."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
logger = logging.getLogger("spasticity_cds.cds_hooks")


class BatchWriter(Generic[T]):
    """Queues records and writes them with ``write(batch)`` from one daemon thread, many per transaction.

    After the first record of a batch arrives the thread waits ``linger_s`` for more, so a busy worker commits
    (and spends the GIL on SQL) a few times a second rather than once per call.

    ``flush`` waits until everything handed over so far is written (feedback calls it before looking a card up).
    A failed batch is written again record by record, so that one bad record cannot take the others with it; a
    record that still fails is logged and dropped: the hook answer has already gone, and a retry could repeat it
    forever.
    """

    def __init__(self, write: Callable[[list[T]], object], *, max_batch: int = 500, linger_s: float = 0.05) -> None:
        self._write = write
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._queue: queue.SimpleQueue[Sequence[T]] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, records: Sequence[T]) -> None:
        """Hand records over for writing; returns at once."""
        if not records:
            return
        with self._idle:
            self._pending += 1
        self._ensure_thread()
        self._queue.put(records)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record submitted so far is written; False if that took longer than ``timeout_s``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="issued-card-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            parts = [self._queue.get()]
            time.sleep(self._linger_s)  # let a burst of calls share one transaction
            while len(parts) < self._max_batch:
                try:
                    parts.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write_all([record for part in parts for record in part])
            with self._idle:
                self._pending -= len(parts)
                self._idle.notify_all()

    def _write_all(self, records: list[T]) -> None:
        try:
            self._write(records)
        except Exception:
            if len(records) == 1:
                logger.exception("could not store an issued card; feedback on it will not join")
                return
            for record in records:  # the batch's transaction rolled back: nothing of it is stored yet
                self._write_all([record])
