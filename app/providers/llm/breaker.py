"""A circuit breaker for one LLM provider: stop calling a provider that keeps failing, and try it again later.

closed     calls go through; `failures` consecutive failures, or a failure rate of at least `failure_rate` over the
           last `window` calls (once `min_calls` were made), open it.
open       calls are refused for `cooldown_s`, so a message goes straight to the next provider instead of waiting
           for a timeout that will come.
half-open  after the cool-down one call (the probe) goes through, the others are still refused; its success
           closes the breaker, its failure opens it for another cool-down.

Only failures that say the provider is unhealthy count (timeouts, connection errors, 5xx; see the router).
State lives in this process: each orchestrator process keeps its own breakers and learns on its own. The clock
is injectable so tests move time instead of waiting. pybreaker was considered: it reads the wall clock itself,
counts consecutive failures only and lets every call through while half-open.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failures: int = 5,
        failure_rate: float = 0.5,
        window: int = 20,
        min_calls: int = 10,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.failure_rate = failure_rate
        self.min_calls = min_calls
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._consecutive = 0
        self._outcomes: deque[bool] = deque(maxlen=window)  # True: a failure
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
                return HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """May a call go to the provider now? While half-open, True for the one probe only; the caller must then
        report its outcome with `record`."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
                self._state, self._probing = HALF_OPEN, False
            if self._state == CLOSED:
                return True
            if self._state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def record(self, failed: bool) -> None:
        with self._lock:
            if self._state == HALF_OPEN:
                self._probing = False
                if failed:
                    self._open()
                else:
                    self._close()
                return
            if self._state == OPEN:
                return  # a call that started before the breaker opened: already counted against it
            self._outcomes.append(failed)
            self._consecutive = self._consecutive + 1 if failed else 0
            failed_calls = sum(self._outcomes)
            if self._consecutive >= self.failures or (
                len(self._outcomes) >= self.min_calls and failed_calls / len(self._outcomes) >= self.failure_rate
            ):
                self._open()

    def release(self) -> None:
        """The call ended without saying anything of the provider's health: a half-open breaker lets the next
        call probe instead."""
        with self._lock:
            self._probing = False

    def _open(self) -> None:
        self._state, self._opened_at = OPEN, self._clock()

    def _close(self) -> None:
        self._state, self._consecutive = CLOSED, 0
        self._outcomes.clear()
