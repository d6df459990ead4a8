"""Leases: one liveness rule; the queue refuses a live lease unless the worker forces it (it decides who is dead)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from comfy.jobs.leases import held_elsewhere, lease_live, owner_alive
from comfy.jobs.queue import JobQueue


def dead_owner() -> str:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{socket.gethostname()}:{int(child.stdout)}:dead"


def test_take_over_refuses_a_live_lease_even_of_a_dead_owner_unless_forced(tmp_path) -> None:
    queue = JobQueue(tmp_path / "queue")
    queue.enqueue({"prompt": "a cat"})
    owner = dead_owner()
    claimed = queue.claim(owner, lease_seconds=60)
    assert claimed is not None and owner_alive(owner) is False
    assert queue.take_over(claimed.id, "me:1:x", lease_seconds=60) is None
    assert queue.take_over(claimed.id, "me:1:x", lease_seconds=60, force=True).lease_owner == "me:1:x"


def test_the_backlog_rule_gives_up_a_dead_owners_live_lease() -> None:
    assert held_elsewhere(f"{socket.gethostname()}:{os.getpid()}:me-too", 200.0, "me", now=100.0) is True
    assert held_elsewhere(dead_owner(), 200.0, "me", now=100.0) is False
    assert lease_live(100.0, now=100.0) is False and lease_live(100.1, now=100.0) is True
