"""Circuit breakers per model and per tool, shared by everything in one process.

closed: calls go through; `failure_threshold` consecutive failures open it.
open: calls are refused at once until `cooldown_s` has passed.
half-open: one trial call goes through; success closes the breaker, failure re-opens it.

State is per process on purpose: a breaker protects this process from waiting on a
dependency that is down, and each process finds out for itself when it is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerAdmission(StrEnum):
    """What a breaker says to one call."""

    REFUSED = "refused"
    CALL = "call"
    TRIAL = "trial"
    """The half-open breaker's one trial: its caller must settle it (success, failure, or
    `CircuitBreaker.release_trial` when the call reached no verdict)."""


@dataclass
class CircuitBreaker:
    """One dependency's breaker."""

    name: str
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker turns half-open once its cooldown has passed)."""
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self.opened_at >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def admit(self) -> BreakerAdmission:
        """Whether a call may go through now, and whether it is the half-open trial.

        Decided under the lock in one look at the clock, so a caller never takes the
        trial without knowing it (the cooldown can end between two looks).
        """
        with self._lock:
            state = self.state
            if state is BreakerState.CLOSED:
                return BreakerAdmission.CALL
            if state is BreakerState.HALF_OPEN and not self.trial_in_flight:
                self.trial_in_flight = True
                return BreakerAdmission.TRIAL
            return BreakerAdmission.REFUSED

    def allow(self) -> bool:
        """Whether a call may go through now; in half-open, only one trial at a time."""
        return self.admit() is not BreakerAdmission.REFUSED

    def release_trial(self) -> None:
        """Give the half-open trial back unsettled: its call reached no verdict."""
        with self._lock:
            self.trial_in_flight = False

    def record_success(self) -> None:
        """A call succeeded: close the breaker."""
        with self._lock:
            self.failures = 0
            self.opened_at = None
            self.trial_in_flight = False

    def record_failure(self) -> None:
        """A call failed in a way that says the dependency is unwell."""
        with self._lock:
            self.failures += 1
            if self.trial_in_flight or self.failures >= self.failure_threshold:
                self.opened_at = self.clock()
            self.trial_in_flight = False

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))


class BreakerBoard:
    """The breakers of one process, by name (``model:gpt-4o-mini``, ``tool:schedule_payment``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Create an empty board; ``clock`` is injectable for tests."""
        self.clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, name: str, *, failure_threshold: int, cooldown_s: float) -> CircuitBreaker:
        """The breaker for ``name``, created closed on first use; settings follow the caller."""
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = CircuitBreaker(name, failure_threshold, cooldown_s, self.clock)
                self._breakers[name] = breaker
            breaker.failure_threshold = failure_threshold
            breaker.cooldown_s = cooldown_s
            return breaker

    def snapshot(self) -> dict[str, str]:
        """Every breaker's state, for status output and tests."""
        with self._lock:
            return {name: b.state.value for name, b in sorted(self._breakers.items())}

    def reset(self) -> None:
        """Forget every breaker (tests; an operator restarting the process does the same)."""
        with self._lock:
            self._breakers.clear()


BREAKERS = BreakerBoard()
"""The process-wide board."""
