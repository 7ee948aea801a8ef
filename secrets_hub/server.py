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
# under load that many threads fight over the GIL, and on SQLite over its one write lock (every read writes
# an audit event). A few threads still overlap the waits: on SQLite the audit commit; on PostgreSQL the
# network round trips and the commit's fsync, which take longer, so more threads keep the cores busy and the
# audit batches fuller. bench/run.py, 2 workers, wrk -c16, reads: SQLite 4 threads ~3,300 req/s, 8 ~3,150;
# PostgreSQL 4 ~1,400, 8 ~2,000.
BLOCKING_THREADS = {"sqlite": 4, "postgresql": 8}


def serve_wsgi(target: str, host: str, port: int, workers: int, threads: int, factory: bool = False) -> None:
    """Serve the WSGI app named by `target` ("module:attribute") with granian until stopped."""
    from granian.constants import Interfaces
    from granian.server import Server

    Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        factory=factory,
        log_access=False,
    ).serve()
