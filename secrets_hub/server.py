"""The production server and the settings `secrets-hub serve` runs it with.

One place, so that the benchmark's constant-JSON floor runs under exactly the same server settings.
"""

from __future__ import annotations

import os

# One worker process per core: the app is Python, so a process per core is what uses the machine.
# Rate-limit counters in memory:// are then per process; SECRETS_HUB_RATELIMIT_STORAGE=redis://... makes
# them exact across workers.
DEFAULT_WORKERS = os.cpu_count() or 1

# Threads per WSGI worker. A request on PostgreSQL waits on network round trips and the commit's fsync:
# threads overlap those waits, and more of them keep the cores busy and the audit batches fuller. granian's
# WSGI default is backlog / workers / 2 threads (256 with 2 workers): under load that many fight over the
# GIL. bench/run.py, reads: PostgreSQL 4 threads ~1,400 req/s, 8 ~2,000.
WSGI_THREADS = {"sqlite": 4, "postgresql": 8}


def serving(backend: str, ratelimit_storage: str) -> tuple[str, str, int]:
    """How `secrets-hub serve` runs: (the app's factory, the interface, threads per worker).

    On an event loop, a request (a greenlet) must never wait on the network, which would stall every other
    request of its worker: so only on SQLite with rate-limit counters in memory (with redis:// they are asked
    on every API request). There all the requests of a worker run on its one loop thread (web/asgi.py and
    event_loop.py say why): bench/run.py, 2 workers, wrk -c16, audited reads 1.2-1.6 times what 4 threads per
    worker served. Anything else runs on WSGI threads.
    """
    if backend == "sqlite" and ratelimit_storage.startswith("memory://"):
        return "secrets_hub.web.asgi:create_asgi_app", "asgi", 1
    return "secrets_hub.app:create_app", "wsgi", WSGI_THREADS[backend]


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
