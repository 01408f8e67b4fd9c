"""What the queue did in the last minute: jobs finished, and how long each waited before it started.

The admin's panel under the status line reads it (sdplay/page.py); the queue's wrapper feeds it
(sdplay/ui/fair_share.py). Plain numbers and a clock, so that it is tested without a server.
"""

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW = 60.0  # seconds: "the last minute"
FORGOTTEN = 3600.0  # seconds after which a join never followed by its start or end is dropped (a vanished client)


@dataclass(frozen=True)
class QueueSummary:
    """The last minute of a queue: jobs finished, jobs waiting now, and the 95th percentile of the waits of the jobs
    that started (None if none did)."""

    finished: int
    waiting: int
    p95_wait: float | None
    started: int

    def describe(self) -> str:
        wait = "no job started" if self.p95_wait is None else f"p95 wait {self.p95_wait:.1f} s ({self.started} started)"
        return f"Queue, last minute: {self.finished} jobs/min · {self.waiting} waiting now · {wait}"


@dataclass
class QueueLog:
    """Joins, starts and ends of the jobs of one queue, by event id, kept for `window` seconds."""

    window: float = WINDOW
    clock: Callable[[], float] = time.monotonic
    _joined: dict[str, float] = field(default_factory=dict)  # joined, not started yet
    _started: dict[str, float] = field(default_factory=dict)  # started, its join not heard yet
    _waits: deque[tuple[float, float]] = field(default_factory=deque)  # (started at, seconds waited)
    _finished: deque[float] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def joined(self, event_id: str, at: float) -> None:
        """The job `event_id` joined at `at` (the clock's time). Its start may have been heard already: the queue
        can start a job before the code that put it there hears its id."""
        with self._lock:
            started = self._started.pop(event_id, None)
            if started is None:
                self._joined[event_id] = at
            else:
                self._waits.append((started, started - at))

    def started(self, event_id: str) -> None:
        now = self.clock()
        with self._lock:
            joined = self._joined.pop(event_id, None)
            if joined is None:
                self._started[event_id] = now
            else:
                self._waits.append((now, now - joined))
            self._forget(now)

    def finished(self, event_id: str) -> None:
        now = self.clock()
        with self._lock:
            self._joined.pop(event_id, None)  # ended before it started: cancelled while waiting
            self._started.pop(event_id, None)
            self._finished.append(now)
            self._forget(now)

    def summary(self, waiting: int) -> QueueSummary:
        """The last `window` seconds, with `waiting` jobs in the queue now."""
        with self._lock:
            self._forget(self.clock())
            waits = sorted(wait for _, wait in self._waits)
            finished = len(self._finished)
        p95 = waits[math.ceil(0.95 * len(waits)) - 1] if waits else None  # nearest rank
        return QueueSummary(round(finished * WINDOW / self.window), waiting, p95, len(waits))

    def _forget(self, now: float) -> None:
        while self._waits and self._waits[0][0] < now - self.window:
            self._waits.popleft()
        while self._finished and self._finished[0] < now - self.window:
            self._finished.popleft()
        for pending in (self._joined, self._started):
            for event_id in [e for e, at in pending.items() if at < now - FORGOTTEN]:
                del pending[event_id]
