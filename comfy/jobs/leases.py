"""Worker ids and leases: who runs a job, and whether that worker still lives.

A lease is an owner (a worker id, ``host:pid:random``) and an expiry. The queue and the upload backlog
both lease their work this way, so a dead process's work is taken up by another, once.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import socket
from pathlib import Path

__all__ = ["worker_id", "owner_alive", "lease_live", "held_elsewhere"]


@functools.cache
def _host() -> str:
    """This host as worker ids name it: the hostname, and a tag of the boot and the pid namespace.

    Two containers may share a hostname (``network_mode: host``, a fixed ``hostname:``) yet not their pids:
    without the tag each would take the other's live pids for dead ones and force its jobs away.
    """
    parts = []
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: str(os.stat("/proc/self/ns/pid").st_ino)):
        try:
            parts.append(read())
        except OSError:
            parts.append("?")
    tag = hashlib.sha256("/".join(parts).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}~{tag}"


def worker_id() -> str:
    """A new worker id, ``host:pid:random`` (the host tagged by :func:`_host`), as :func:`owner_alive` reads it."""
    return f"{_host()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_alive(lease_owner: str) -> bool | None:
    """Whether the process behind a worker id lives: True/False on this host, None elsewhere (or unparsable).

    A pid can be reused after the owner died, so True is "maybe alive": wait for the lease to expire.
    """
    try:
        host, pid_text, _ = lease_owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != _host() or pid <= 0:  # another machine, container or boot: its pids are not ours to read
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return None
    return True


def lease_live(expires: float | None, now: float) -> bool:
    """Whether a lease still runs at ``now`` (one boundary for the queue and the backlog)."""
    return expires is not None and expires > now


def held_elsewhere(holder: str | None, expires: float | None, me: str, now: float) -> bool:
    """True while another worker's live lease holds the work: not expired, and its owner not known dead.

    The upload backlog's claim rule: an owner that died on this host gives its records up at once,
    before its lease runs out. (The job queue's ``take_over`` refuses any live lease unless forced: the
    worker decides, with :func:`owner_alive`, when a dead owner's job is to be forced.)

    >>> held_elsewhere("elsewhere:1:ab", 110.0, "me", now=100.0), held_elsewhere("elsewhere:1:ab", 90.0, "me", now=100.0)
    (True, False)
    """
    if holder is None or holder == me or not lease_live(expires, now):
        return False
    return owner_alive(holder) is not False
