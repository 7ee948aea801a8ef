"""Starting afresh in a forked child.

A process forked while its threads held locks or used connections inherits the locks as they were, perhaps
taken by threads the child does not have, and the connections' sockets and files, shared with its parent. An
object registered here gets its `_start_afresh()` called in every child forked from this process: it drops
what it cannot share and makes new locks. The objects are called in no particular order, so each one's
`_start_afresh` touches only its own state.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

_owners: weakref.WeakSet[Any] = weakref.WeakSet()


def start_afresh_in_forked_children(owner: Any) -> None:
    """Call `owner._start_afresh()` in each child forked from this process, for as long as `owner` lives."""
    _owners.add(owner)


def _after_fork_in_child() -> None:
    for owner in list(_owners):
        owner._start_afresh()


os.register_at_fork(after_in_child=_after_fork_in_child)
