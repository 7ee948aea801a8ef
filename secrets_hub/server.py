"""The production WSGI server and the settings `secrets-hub serve` runs it with.

One place, so that the benchmark's constant-JSON floor runs under exactly the same server settings.
"""

from __future__ import annotations

import os

# One worker process per core: the app is Python, so a process per core is what uses the machine.
# Rate-limit counters in memory:// are then per process; SECRETS_HUB_RATELIMIT_STORAGE=redis://... makes
# them exact across workers.
DEFAULT_WORKERS = os.cpu_count() or 1

# Threads per worker running the app. granian's WSGI default is backlog / workers / 2 (256 with 2 workers):
# under load that many threads fight over the GIL and over SQLite's write lock (every read writes an
# audit row), and SQLite's busy handler sleeps, so p99 reached ~500 ms. A few threads still overlap
# database round trips. bench/run.py, SQLite, 2 workers, wrk -c16: 469 -> 569 req/s, p99 519 -> 143 ms.
BLOCKING_THREADS = 4


def serve_wsgi(target: str, host: str, port: int, workers: int, factory: bool = False) -> None:
    """Serve the WSGI app named by `target` ("module:attribute") with granian until stopped."""
    from granian.constants import Interfaces
    from granian.server import Server

    Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=BLOCKING_THREADS,
        factory=factory,
        log_access=False,
    ).serve()
