"""The app's blocking code run on an asyncio event loop: each request in a greenlet of its own.

`secrets-hub serve` on SQLite serves requests this way (web/asgi.py). Every request there reads a value
and writes an audit event, and a read costs less CPU than handing it between threads: with a thread per
request, workers slept and woke about twice per read, and a fifth of the CPU sat idle while reads
queued. On one thread per worker, the requests that arrive together share one audit commit, and none
waits for another thread to wake it.

The code that runs is the same blocking code the threads run, unchanged but for the places where it
waits: for something other requests do (the audit writer's batch in audit.py, the writer locks and a
database another program has locked in store.py), or for long work that needs no interpreter (scrypt,
through `blocking`). There it asks `on_loop()`, and if so waits through `wait_for`, which hands the loop
back to the other requests (the way SQLAlchemy's asyncio extension runs its blocking core: greenlet_spawn,
await_only). Everything else a request does, SQLite's local calls included, runs to its end without a
switch. asyncio itself is imported only on a loop: the command line (`secrets-hub get`) does without it.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from greenlet import getcurrent, greenlet

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")


# Idle greenlets kept per thread: a greenlet's first Python call allocates its own frame stack, which cost
# more than the switches of a whole request (about 13 us a greenlet, against 1 us reused).
MAX_IDLE = 64
_idle = threading.local()


class _Finished:
    """What a function run by `run` returned or raised; emptied once taken."""

    __slots__ = ("result", "error")

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None


class _OnLoop(greenlet):
    """A greenlet of `run`'s: it runs one function after another, each in a fresh context (as a thread
    of a WSGI server gives each request its own), and hands what it awaits to its parent, the loop's."""

    def run(self, function: Callable[..., Any] | None, args: tuple) -> None:
        finished = _Finished()
        while True:
            try:
                finished.result = contextvars.Context().run(function, *args)
            except BaseException as error:  # noqa: BLE001 - raised by `run`, in the request's task
                finished.error = error
            # Nothing of a request stays with an idle greenlet: not its arguments (a token, a body), nor its result.
            function = args = None
            function, args = self.parent.switch(finished)


async def run(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a greenlet; the loop serves other requests while it waits in `wait_for`."""
    idle = _idle.__dict__.setdefault("greenlets", [])
    if idle:
        child = idle.pop()
        child.parent = getcurrent()
    else:
        child = _OnLoop(parent=getcurrent())
    handed = child.switch(function, args)
    while not isinstance(handed, _Finished):
        try:
            outcome = await handed
        except BaseException as error:  # noqa: BLE001 - raised where the child waits, as a blocking wait would
            handed = child.throw(error)
        else:
            handed = child.switch(outcome)
    result, error = handed.result, handed.error
    handed.result = handed.error = None
    if len(idle) < MAX_IDLE:
        idle.append(child)
    if error is not None:
        raise error
    return result


def on_loop() -> bool:
    """Whether this code runs in a greenlet of `run`: then it must never block, only `wait_for`."""
    return isinstance(getcurrent(), _OnLoop)


def wait_for(awaitable: Awaitable[T]) -> T:
    """From code run by `run`: the result of `awaitable`, the loop serving other requests meanwhile."""
    return getcurrent().parent.switch(awaitable)


def sleep(seconds: float) -> None:
    """Pause this request: on the loop, letting the loop serve others; elsewhere, the thread sleeps."""
    if on_loop():
        wait_for(_asyncio().sleep(seconds))
    else:
        time.sleep(seconds)


def blocking(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, which takes long without needing the interpreter (scrypt): on the loop, in a thread
    of the loop's default executor, the loop serving others meanwhile; elsewhere, here."""
    if on_loop():
        return wait_for(running_loop().run_in_executor(None, function, *args))
    return function(*args)


def running_loop() -> asyncio.AbstractEventLoop:
    """The loop this code runs on (on_loop() is true)."""
    return _asyncio().get_running_loop()


def new_lock() -> asyncio.Lock:
    """A lock of the running loop's, for requests on it to queue on."""
    return _asyncio().Lock()


def _asyncio() -> Any:
    import asyncio

    return asyncio
