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
# GIL, and on SQLite over its one write lock. bench/run.py, 2 workers, wrk -c16, reads: PostgreSQL 4 threads
# ~1,400 req/s, 8 ~2,000; SQLite (all its requests were on threads then) 4 ~3,300, 8 ~3,150.
WSGI_THREADS = {"sqlite": 4, "postgresql": 8}


def serving(backend: str, ratelimit_storage: str) -> tuple[str, str, int | None]:
    """How `secrets-hub serve` runs: (the app's factory, the interface, threads per WSGI worker).

    On an event loop, a request (a greenlet) must never wait on the network, which would stall every other
    request of its worker: so only on SQLite with rate-limit counters in memory (with redis:// they are asked
    on every API request). There all the requests of a worker run on its one loop thread (web/asgi.py and
    event_loop.py say why): 2 workers, wrk -t2 -c16, audited reads 1.1-1.6 times what 4 threads per worker
    served in each of 5 alternating pairs. Anything else runs on WSGI threads.
    """
    if backend == "sqlite" and ratelimit_storage.startswith("memory://"):
        return "secrets_hub.web.asgi:create_asgi_app", "asgi", None
    return "secrets_hub.app:create_app", "wsgi", WSGI_THREADS[backend]


def serve_app(target: str, host: str, port: int, workers: int, interface: str = "wsgi", threads: int | None = None,
              factory: bool = False) -> None:
    """Serve the app named by `target` ("module:attribute"), WSGI or ASGI, with granian until stopped."""
    from granian.constants import Interfaces
    from granian.server import Server

    Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.WSGI if interface == "wsgi" else Interfaces.ASGI,
        workers=workers,
        # None for ASGI, whose worker runs the app on its event loop's thread alone.
        blocking_threads=threads,
        factory=factory,
        log_access=False,
    ).serve()
