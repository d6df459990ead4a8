"""A separate process for the multi-process queue tests (run as a script, not collected by pytest).

    python tests/helpers/queue_claimer.py claim DIRECTORY WORKER_ID
        claim → finish until the queue is empty; prints each claimed job id on its own line
    python tests/helpers/queue_claimer.py enqueue DIRECTORY KEY [KEY ...]
        enqueue one job per idempotency key (same body for a key); prints "<key> <job id> <created>"
    python tests/helpers/queue_claimer.py crash DIRECTORY KEY [KEY ...]
        like enqueue, then kills itself with SIGKILL (no close, no clean exit)

Both print "ready" once the queue is open and wait for a line on stdin before starting, so that the
test can release every process at the same moment and they really race.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from comfy.jobs.queue import JobQueue  # noqa: E402


def main(argv: list[str]) -> int:
    mode, directory, *rest = argv
    queue = JobQueue(directory)
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        if mode == "claim":
            (worker,) = rest
            while (job := queue.claim(worker, lease_seconds=60)) is not None:
                print(job.id, flush=False)
                queue.finish(job.id, worker, outputs=[{"by": worker}])
        elif mode in ("enqueue", "crash"):
            for key in rest:
                job, created = queue.enqueue({"prompt": f"body of {key}"}, idempotency_key=key, owner="racer")
                print(key, job.id, int(created), flush=mode == "crash")
            if mode == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            print(f"unknown mode {mode!r}", file=sys.stderr)
            return 2
    finally:
        queue.close()
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
