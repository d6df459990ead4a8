"""Leases: one liveness rule; the queue refuses a live lease unless the worker forces it (it decides who is dead)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from comfy.jobs.leases import held_elsewhere, lease_live, owner_alive, worker_id
from comfy.jobs.queue import JobQueue

HOST = worker_id().rsplit(":", 2)[0]  # this host as worker ids name it


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def dead_owner() -> str:
    return f"{HOST}:{dead_pid()}:dead"


def test_take_over_refuses_a_live_lease_even_of_a_dead_owner_unless_forced(tmp_path) -> None:
    queue = JobQueue(tmp_path / "queue")
    queue.enqueue({"prompt": "a cat"})
    owner = dead_owner()
    claimed = queue.claim(owner, lease_seconds=60)
    assert claimed is not None and owner_alive(owner) is False
    assert queue.take_over(claimed.id, "me:1:x", lease_seconds=60) is None
    assert queue.take_over(claimed.id, "me:1:x", lease_seconds=60, force=True).lease_owner == "me:1:x"


def test_the_backlog_rule_gives_up_a_dead_owners_live_lease() -> None:
    assert held_elsewhere(f"{HOST}:{os.getpid()}:me-too", 200.0, "me", now=100.0) is True
    assert held_elsewhere(dead_owner(), 200.0, "me", now=100.0) is False
    assert lease_live(100.0, now=100.0) is False and lease_live(100.1, now=100.0) is True


def test_a_container_with_the_same_hostname_is_not_taken_for_this_one() -> None:
    # Another pid namespace on a host of the same name (network_mode: host): its pids are not ours, so a
    # pid that is dead here says nothing of it. Unknown, not dead: its jobs wait for the lease to expire.
    assert owner_alive(f"{socket.gethostname()}~0123abcd:{dead_pid()}:other") is None
    assert owner_alive(f"{socket.gethostname()}:{dead_pid()}:old-style") is None
    assert owner_alive(dead_owner()) is False
