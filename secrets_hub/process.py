"""Running a child command for `secrets-hub run`: signals pass through, its exit status becomes ours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

# Everything a terminal, a supervisor or a container runtime may send to stop or poke a process.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                     signal.SIGWINCH)

TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)


def _in_foreground_of_terminal() -> bool:
    """Whether our process group (which the child shares) is the one a Ctrl-C on the terminal reaches."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def run_with_env(command: list[str], env: dict[str, str]) -> int:
    """Start `command` with `env`, forward signals to it, and return its exit status (128+N if killed by signal N)."""
    try:
        child = subprocess.Popen(command, env=env)  # noqa: S603 - running the user's command is the point
    except FileNotFoundError:
        print(f"Error: command not found: {command[0]}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"Error: permission denied: {command[0]}", file=sys.stderr)
        return 126
    def forward(received: int, _frame: object) -> None:
        if received in TERMINAL_SIGNALS and _in_foreground_of_terminal():
            return  # the terminal sent it to the child as well: forwarding would deliver it twice
        child.send_signal(received)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - status if status < 0 else status
