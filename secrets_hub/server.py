"""The production server and the settings `secrets-hub serve` runs it with.

One place, so that the benchmark's constant-JSON floor runs under exactly the same server settings.
"""

from __future__ import annotations

import os

# One worker process per core: the app is Python, so a process per core is what uses the machine.
# Rate-limit counters in memory:// are then per process; SECRETS_HUB_RATELIMIT_STORAGE=redis://... makes
# them exact across workers.
DEFAULT_WORKERS = os.cpu_count() or 1

# How each backend is served: (the app's factory, the interface, threads per worker).
# On SQLite every request runs on one event loop per worker (web/asgi.py and event_loop.py say why):
# bench/run.py, 2 workers, wrk -c16, audited reads about 1.5x what 4 threads per worker served.
# On PostgreSQL a request waits on network round trips and the commit's fsync, which would stall a loop:
# a WSGI worker's threads overlap them instead, and more threads keep the cores busy and the audit batches
# fuller. granian's WSGI default is backlog / workers / 2 threads (256 with 2 workers): under load that
# many fight over the GIL. bench/run.py, reads: PostgreSQL 4 threads ~1,400 req/s, 8 ~2,000.
SERVE = {
    "sqlite": ("secrets_hub.web.asgi:create_asgi_app", "asgi", 1),
    "postgresql": ("secrets_hub.app:create_app", "wsgi", 8),
}


def serve_app(target: str, host: str, port: int, workers: int, interface: str = "wsgi", threads: int = 1,
              factory: bool = False) -> None:
    """Serve the app named by `target` ("module:attribute"), WSGI or ASGI, with granian until stopped."""
    from granian.constants import Interfaces
    from granian.server import Server

    wsgi = interface == "wsgi"
    Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.WSGI if wsgi else Interfaces.ASGI,
        workers=workers,
        # An ASGI worker runs its app on its event loop's thread alone.
        blocking_threads=threads if wsgi else None,
        factory=factory,
        log_access=False,
    ).serve()
