"""Failed authentications per client address, on every channel that takes tokens over the network.

The REST API and MCP over HTTP count them alike: past AUTH_FAILURE_LIMIT, every request from that
address is refused for the rest of the minute, before its token is checked, so a guesser learns
nothing from the answers, right or wrong. The counters live in SECRETS_HUB_RATELIMIT_STORAGE: per
process with memory://, shared by every process with redis://.
"""

from __future__ import annotations

import threading
import time
from typing import Any

AUTH_FAILURE_LIMIT = "30 per minute"
TOO_MANY_FAILURES = "Too many failed authentications; try again in a minute"
_NAMESPACE = "auth-failures"


class FailedAuthentications:
    def __init__(self, storage_uri: str):
        self.storage_uri = storage_uri
        # Counted in this process's memory: a check never waits on the network.
        self.in_process = storage_uri.startswith("memory://")
        self._lock = threading.Lock()
        self._counter: tuple[Any, Any] | None = None
        # In memory, no address is blocked once a window has passed since this process last counted a failure:
        # until the next one, a check skips the lookup (every request of the busiest path asks).
        self._quiet_from = 0.0

    def _limit(self) -> tuple[Any, Any]:
        if self._counter is not None:
            return self._counter
        # Built on first use: importing `limits` would cost `secrets-hub get` a tenth of its start-up.
        with self._lock:
            if self._counter is None:
                from limits import parse
                from limits.storage import storage_from_string
                from limits.strategies import FixedWindowRateLimiter

                self._counter = (FixedWindowRateLimiter(storage_from_string(self.storage_uri)), parse(AUTH_FAILURE_LIMIT))
            return self._counter

    def blocked(self, address: str | None) -> bool:
        if self.in_process and time.time() >= self._quiet_from:
            return False
        counter, limit = self._limit()
        return not counter.test(limit, _NAMESPACE, str(address))

    def count(self, address: str | None) -> None:
        counter, limit = self._limit()
        if self.in_process:
            # By the wall clock, as limits keeps its windows: a clock set back then delays both alike. A second's margin.
            self._quiet_from = max(self._quiet_from, time.time() + limit.get_expiry() + 1)
        counter.hit(limit, _NAMESPACE, str(address))
