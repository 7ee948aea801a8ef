"""The production WSGI server and the settings `secrets-hub serve` runs it with.

One place, so that the benchmark's constant-JSON floor runs under exactly the same server settings.
"""

from __future__ import annotations


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
        factory=factory,
        log_access=False,
    ).serve()
