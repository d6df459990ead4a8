"""The persistent job queue: states, order, idempotency, leases, persistence, and real processes racing.

No sleeps: time is a fake clock handed to the queue, and the multi-process tests release their
processes with a line on stdin and join them with a timeout.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path

import diskcache
import pytest

from comfy.errors import IdempotencyConflict, JobNotFound, QueueError
from comfy.jobs.layout import JOB_KEY
from comfy.jobs.leases import owner_alive, worker_id
from comfy.jobs.queue import JobQueue
from comfy.jobs.records import Job, JobPage, JobState

HELPER = Path(__file__).parent / "helpers" / "queue_claimer.py"
W1, W2 = "host-a:101:aaaa", "host-b:202:bbbb"


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock):
    q = JobQueue(tmp_path / "queue", now=clock, max_attempts=3)
    yield q
    q.close()


def add(queue: JobQueue, n: int, **kwargs) -> list[Job]:
    return [queue.enqueue({"prompt": f"job {i}", "seed": i}, **kwargs)[0] for i in range(n)]


# -- records ----------------------------------------------------------------------------------------


def test_enqueue_creates_a_plain_queued_record(queue: JobQueue, clock: FakeClock, tmp_path: Path) -> None:
    job, created = queue.enqueue({"prompt": "a cat", "steps": 20}, owner="ann", idempotency_key="k1")

    assert created
    assert len(job.id) == 16 and int(job.id, 16) >= 0
    assert job.state is JobState.QUEUED and not job.done
    assert (job.kind, job.workflow, job.owner) == ("generate", None, "ann")
    assert job.params == {"prompt": "a cat", "steps": 20}
    assert (job.queued_at, job.started_at, job.finished_at, job.attempts) == (clock.now, None, None, 0)
    assert queue.get(job.id) == job
    data = job.to_dict()
    assert json.loads(json.dumps(data)) == data and data["state"] == "queued"
    assert Job.from_dict({**data, "field_from_the_future": 1}) == job
    # Stored as a plain dict of plain values, so it survives code changes.
    raw = diskcache.Cache(str(tmp_path / "queue")).get(JOB_KEY.format(job.id))
    assert raw == data and type(raw["state"]) is str


def test_seq_counts_up_and_get_unknown_raises(queue: JobQueue) -> None:
    jobs = add(queue, 3)
    assert [j.seq for j in jobs] == [1, 2, 3]
    with pytest.raises(JobNotFound) as info:
        queue.get("0000000000000000")
    assert info.value.job_id == "0000000000000000"
    with pytest.raises(JobNotFound):
        queue.get("not-an-id")


def test_workflow_jobs_keep_their_graph(queue: JobQueue) -> None:
    graph = {"1": {"class_type": "KSampler", "inputs": {"seed": 5}}}
    job, _ = queue.enqueue({"images": {}}, kind="workflow", workflow=graph)
    assert queue.get(job.id).workflow == graph and job.kind == "workflow"
    with pytest.raises(QueueError):
        queue.enqueue({}, kind="nonsense")


def test_state_is_final() -> None:
    assert [s for s in JobState if s.is_final] == [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]


# -- listing ----------------------------------------------------------------------------------------


def test_list_is_newest_first_and_pages_with_a_cursor(queue: JobQueue) -> None:
    jobs = add(queue, 7)
    first = queue.list(limit=3)
    assert [j.id for j in first.jobs] == [j.id for j in jobs[6:3:-1]]
    assert first.total == 7 and first.next_cursor is not None
    second = queue.list(limit=3, cursor=first.next_cursor)
    third = queue.list(limit=3, cursor=second.next_cursor)
    assert [j.seq for j in second.jobs] == [4, 3, 2]
    assert [j.seq for j in third.jobs] == [1] and third.next_cursor is None
    assert queue.list(limit=7).next_cursor is None


def test_list_walks_thousands_of_jobs_across_index_buckets(queue: JobQueue) -> None:
    jobs = queue.enqueue_many([{"params": {"i": i}} for i in range(700)], owner="ann")
    seen: list[int] = []
    page = JobPage([], None, None)
    while True:
        page = queue.list(limit=64, cursor=page.next_cursor)
        seen += [j.seq for j in page.jobs]
        if page.next_cursor is None:
            break
    assert seen == [j.seq for j in reversed(jobs)] == list(range(700, 0, -1))
    assert page.total == 700


def test_list_filters_by_state_and_owner(queue: JobQueue) -> None:
    ann = add(queue, 4, owner="ann")
    bob = add(queue, 3, owner="bob")
    anon = add(queue, 1)
    running = queue.claim(W1, lease_seconds=30)  # ann[0]
    queue.finish(queue.claim(W1, lease_seconds=30).id, W1, outputs=[])  # ann[1]
    queue.cancel(bob[0].id)

    def ids(page: JobPage) -> list[str]:
        return [j.id for j in page.jobs]

    assert running is not None and running.id == ann[0].id
    queued = queue.list(states=[JobState.QUEUED])
    assert ids(queued) == [anon[0].id, bob[2].id, bob[1].id, ann[3].id, ann[2].id] and queued.total == 5
    assert ids(queue.list(states={JobState.RUNNING, JobState.SUCCEEDED})) == [ann[1].id, ann[0].id]
    mine = queue.list(owner="ann")
    assert ids(mine) == [j.id for j in reversed(ann)] and mine.total == 4
    page = queue.list(owner="ann", states=[JobState.QUEUED], limit=1)
    assert ids(page) == [ann[3].id] and page.total == 2
    assert ids(queue.list(owner="ann", states=[JobState.QUEUED], cursor=page.next_cursor)) == [ann[2].id]
    assert queue.list(owner="bob", states=["cancelled"]).total == 1
    assert queue.list(owner="nobody") == JobPage([], None, 0)
    assert queue.counts() == {JobState.QUEUED: 5, JobState.RUNNING: 1, JobState.SUCCEEDED: 1,
                              JobState.FAILED: 0, JobState.CANCELLED: 1}


# -- idempotency ------------------------------------------------------------------------------------


def test_same_key_same_request_returns_the_same_job_in_any_state(queue: JobQueue) -> None:
    job, created = queue.enqueue({"prompt": "a", "seed": 1}, idempotency_key="k", owner="ann")
    again, created_again = queue.enqueue({"seed": 1, "prompt": "a"}, idempotency_key="k", owner="ann")
    assert created and not created_again and again == job

    queue.finish(queue.claim(W1, lease_seconds=5).id, W1, outputs=[{"f": 1}])
    done, created_late = queue.enqueue({"prompt": "a", "seed": 1}, idempotency_key="k", owner="ann")
    assert not created_late and done.id == job.id and done.state is JobState.SUCCEEDED
    assert queue.counts()[JobState.QUEUED] == 0 and queue.list().total == 1


def test_same_key_different_request_conflicts(queue: JobQueue) -> None:
    job, _ = queue.enqueue({"prompt": "a"}, idempotency_key="k", owner="ann")
    with pytest.raises(IdempotencyConflict) as info:
        queue.enqueue({"prompt": "b"}, idempotency_key="k", owner="ann")
    assert (info.value.key, info.value.job_id) == ("k", job.id)
    with pytest.raises(IdempotencyConflict):
        queue.enqueue({"prompt": "a"}, kind="workflow", workflow={}, idempotency_key="k", owner="ann")


def test_keys_are_scoped_per_owner(queue: JobQueue) -> None:
    ann, _ = queue.enqueue({"prompt": "a"}, idempotency_key="k", owner="ann")
    bob, bob_created = queue.enqueue({"prompt": "different"}, idempotency_key="k", owner="bob")
    anon, anon_created = queue.enqueue({"prompt": "a"}, idempotency_key="k")
    assert bob_created and anon_created and len({ann.id, bob.id, anon.id}) == 3


def test_enqueue_many_is_one_batch_with_the_same_rules(queue: JobQueue) -> None:
    first, _ = queue.enqueue({"i": 0}, idempotency_key="k0")
    jobs = queue.enqueue_many([
        {"params": {"i": 0}, "idempotency_key": "k0"},
        {"params": {"i": 1}},
        {"params": {"i": 2}, "idempotency_key": "k2"},
        {"params": {"i": 2}, "idempotency_key": "k2"},
    ])
    assert jobs[0].id == first.id and jobs[2].id == jobs[3].id
    assert queue.pending_ids() == [first.id, jobs[1].id, jobs[2].id]
    with pytest.raises(IdempotencyConflict):
        queue.enqueue_many([{"params": {"i": 3}}, {"params": {"i": 99}, "idempotency_key": "k2"}])
    assert len(queue.pending_ids()) == 3  # the whole batch was rolled back


# -- order, claims, cancels -------------------------------------------------------------------------


def test_claim_is_fifo_and_leases_the_job(queue: JobQueue, clock: FakeClock) -> None:
    jobs = add(queue, 3)
    claimed = [queue.claim(W1, lease_seconds=30) for _ in range(3)]
    assert [j.id for j in claimed if j] == [j.id for j in jobs]
    job = claimed[0]
    assert job is not None and job.state is JobState.RUNNING and job.attempts == 1
    assert (job.lease_owner, job.lease_expires, job.started_at) == (W1, clock.now + 30, clock.now)
    assert queue.claim(W1, lease_seconds=30) is None
    assert queue.pending_ids() == []
    (later,) = add(queue, 1)  # an emptied queue takes new jobs
    assert queue.pending_ids() == [later.id] and queue.claim(W1, lease_seconds=30).id == later.id


def test_move_position_and_pending_ids(queue: JobQueue) -> None:
    a, b, c, d = add(queue, 4)
    assert [queue.position(j.id) for j in (a, b, c, d)] == [0, 1, 2, 3]
    queue.move(d.id, to_index=0)
    queue.move(a.id, to_index=99)  # clamped to the back
    queue.move(c.id, to_index=1)
    assert queue.pending_ids() == [d.id, c.id, b.id, a.id]
    assert queue.position(a.id) == 3
    assert queue.claim(W1, lease_seconds=5).id == d.id
    assert queue.position(d.id) is None and queue.position("ffffffffffffffff") is None
    with pytest.raises(QueueError):
        queue.move(d.id, to_index=0)
    with pytest.raises(JobNotFound):
        queue.move("ffffffffffffffff", to_index=0)
    assert [queue.claim(W1, lease_seconds=5).id for _ in range(3)] == [c.id, b.id, a.id]


def test_pending_order_matches_a_model_through_many_operations(queue: JobQueue) -> None:
    """Enough jobs to span several chunks of the stored order, with moves, cancels and retries."""
    rng = random.Random(7)
    model = [j.id for j in queue.enqueue_many([{"params": {"i": i}} for i in range(600)])]
    for step in range(400):
        op = rng.random()
        if op < 0.3:
            model.append(queue.enqueue({"step": step})[0].id)
        elif op < 0.55 and model:
            job_id = model.pop(rng.randrange(len(model)))
            to = rng.randrange(len(model) + 2)
            queue.move(job_id, to_index=to)
            model.insert(min(to, len(model)), job_id)
        elif op < 0.7 and model:
            queue.cancel(model.pop(rng.randrange(len(model))))
        elif op < 0.85 and model:
            job = queue.claim(W1, lease_seconds=5)
            assert job is not None and job.id == model.pop(0)
            if rng.random() < 0.5:
                back = queue.fail(job.id, W1, code="server_unavailable", message="down", retry=True)
                if back.state is JobState.QUEUED:  # else its attempts ran out
                    model.insert(0, job.id)
        else:
            target = model[rng.randrange(len(model))] if model else None
            assert target is None or queue.position(target) == model.index(target)
    assert queue.pending_ids() == model
    assert queue.counts()[JobState.QUEUED] == len(model)


def test_cancel_a_queued_job_removes_it_for_good(queue: JobQueue, clock: FakeClock) -> None:
    a, b = add(queue, 2)
    cancelled = queue.cancel(a.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at == clock.now
    assert queue.pending_ids() == [b.id] and queue.position(a.id) is None
    assert queue.claim(W1, lease_seconds=5).id == b.id
    assert queue.claim(W1, lease_seconds=5) is None


def test_cancel_a_running_job_asks_its_worker(queue: JobQueue) -> None:
    (a,) = add(queue, 1)
    queue.claim(W1, lease_seconds=5)
    asked = queue.cancel(a.id)
    assert asked.state is JobState.RUNNING and asked.cancel_requested
    assert queue.cancel(a.id) == asked
    with pytest.raises(QueueError):
        queue.mark_cancelled(a.id, W2)
    done = queue.mark_cancelled(a.id, W1)
    assert done.state is JobState.CANCELLED and done.finished_at is not None and done.lease_owner is None


def test_cancel_or_finish_a_final_job_changes_nothing(queue: JobQueue, clock: FakeClock) -> None:
    (a,) = add(queue, 1)
    queue.claim(W1, lease_seconds=5)
    done = queue.finish(a.id, W1, outputs=[{"filename": "a.png"}])
    assert done.state is JobState.SUCCEEDED and done.progress == 1.0 and done.finished_at == clock.now
    clock.advance(10)
    assert queue.cancel(a.id) == done
    assert queue.finish(a.id, W1, outputs=[{"filename": "other.png"}]) == done
    assert queue.fail(a.id, W1, code="x", message="y") == done
    assert queue.update(a.id, W1, progress=0.5) == done
    assert queue.mark_cancelled(a.id) == done


# -- failures and retries -----------------------------------------------------------------------------


def test_fail_with_retry_goes_back_to_the_front_until_attempts_run_out(queue: JobQueue, clock: FakeClock) -> None:
    a, b = add(queue, 2)
    first_start = clock.now + 1
    for attempt in (1, 2):
        clock.advance(1)
        job = queue.claim(W1, lease_seconds=5)
        assert job.id == a.id and job.attempts == attempt
        queue.update(a.id, W1, prompt_id=f"p{attempt}", progress=0.4)
        back = queue.fail(a.id, W1, code="server_unavailable", message="ComfyUI is down", retry=True)
        assert back.state is JobState.QUEUED and back.error is None and back.note == "ComfyUI is down"
        assert (back.prompt_id, back.lease_owner, back.progress) == (None, None, 0.0)
        assert queue.pending_ids() == [a.id, b.id]
    clock.advance(1)
    job = queue.claim(W1, lease_seconds=5)
    assert job.attempts == 3 and job.started_at == first_start  # the first start is kept
    failed = queue.fail(a.id, W1, code="server_unavailable", message="still down", retry=True)
    assert failed.state is JobState.FAILED
    assert failed.error == {"code": "server_unavailable", "message": "still down"}
    assert queue.pending_ids() == [b.id]


def test_fail_without_retry_or_with_a_cancel_pending_is_final(queue: JobQueue) -> None:
    a, b = add(queue, 2)
    queue.claim(W1, lease_seconds=5)
    assert queue.fail(a.id, W1, code="prompt_rejected", message="bad").state is JobState.FAILED
    queue.claim(W1, lease_seconds=5)
    queue.cancel(b.id)
    assert queue.fail(b.id, W1, code="interrupted", message="stopped", retry=True).state is JobState.FAILED


def test_a_worker_without_the_lease_cannot_report(queue: JobQueue) -> None:
    (a,) = add(queue, 1)
    with pytest.raises(QueueError):
        queue.update(a.id, W1, progress=0.1)  # queued: nobody holds it
    queue.claim(W1, lease_seconds=5)
    for call in (lambda: queue.update(a.id, W2, progress=0.1), lambda: queue.finish(a.id, W2, outputs=[]),
                 lambda: queue.fail(a.id, W2, code="x", message="y")):
        with pytest.raises(QueueError, match="lease lost"):
            call()
    assert queue.get(a.id).state is JobState.RUNNING


def test_update_sets_run_details_only(queue: JobQueue) -> None:
    (a,) = add(queue, 1)
    queue.claim(W1, lease_seconds=5)
    job = queue.update(a.id, W1, progress=1.7, node="KSampler", step=3, steps=20, prompt_id="p", client_id="c",
                       backend="http://gpu:8188", note="sampling")
    assert (job.progress, job.node, job.step, job.steps, job.prompt_id, job.backend) == (
        1.0, "KSampler", 3, 20, "p", "http://gpu:8188")
    assert queue.get(a.id) == job
    with pytest.raises(QueueError):
        queue.update(a.id, W1, state="succeeded")
    assert queue.update(a.id, note="waiting for the backend").note == "waiting for the backend"


# -- leases -------------------------------------------------------------------------------------------


def test_lease_renew_expiry_and_take_over(queue: JobQueue, clock: FakeClock) -> None:
    (a,) = add(queue, 1)
    queue.claim(W1, lease_seconds=10)
    clock.advance(8)
    assert queue.renew(a.id, W1, lease_seconds=10)
    assert queue.get(a.id).lease_expires == clock.now + 10
    assert not queue.renew(a.id, W2, lease_seconds=10)
    clock.advance(9)
    assert queue.expired() == []
    assert queue.take_over(a.id, W2, lease_seconds=10) is None  # W1's lease is live

    clock.advance(2)
    assert [j.id for j in queue.expired()] == [a.id]
    taken = queue.take_over(a.id, W2, lease_seconds=10)
    assert taken is not None and taken.lease_owner == W2 and taken.attempts == 1
    assert taken.note == "re-attached after restart" and taken.lease_expires == clock.now + 10
    assert queue.take_over(a.id, W1, lease_seconds=10) is None
    assert not queue.renew(a.id, W1, lease_seconds=10)
    with pytest.raises(QueueError, match="lease lost"):
        queue.update(a.id, W1, progress=0.5)
    assert queue.expired() == []
    assert queue.finish(a.id, W2, outputs=[]).state is JobState.SUCCEEDED
    assert not queue.renew(a.id, W2, lease_seconds=10)
    assert queue.take_over(a.id, W2, lease_seconds=10, force=True) is None  # not running any more


def test_force_take_over_and_requeue(queue: JobQueue) -> None:
    a, b = add(queue, 2)
    queue.claim(W1, lease_seconds=60)
    taken = queue.take_over(a.id, W2, lease_seconds=60, force=True)  # W1 is known dead
    assert taken is not None and taken.lease_owner == W2
    back = queue.requeue(a.id, W2, "re-queued after a worker restart")
    assert back.state is JobState.QUEUED and back.attempts == 1 and back.note == "re-queued after a worker restart"
    assert queue.pending_ids() == [a.id, b.id]


def test_requeue_fails_a_job_out_of_attempts(tmp_path: Path, clock: FakeClock) -> None:
    with JobQueue(tmp_path / "q", now=clock, max_attempts=1) as queue:
        (a,) = add(queue, 1)
        queue.claim(W1, lease_seconds=5)
        failed = queue.requeue(a.id, W1, "the worker died twice")
        assert failed.state is JobState.FAILED and failed.error == {"code": "worker_lost",
                                                                    "message": "the worker died twice"}


def test_worker_ids_and_owner_alive() -> None:
    me = worker_id()
    host, pid, rand = me.rsplit(":", 2)
    assert host.startswith(socket.gethostname() + "~") and int(pid) == os.getpid() and len(rand) == 8
    assert me != worker_id()
    assert owner_alive(me) is True
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=30)
    assert owner_alive(f"{host}:{dead.stdout.strip()}:0000") is False
    assert owner_alive("elsewhere.example:1:abcd") is None
    assert owner_alive("garbage") is None


# -- persistence and housekeeping ---------------------------------------------------------------------


def test_reopening_the_directory_keeps_everything(tmp_path: Path, clock: FakeClock) -> None:
    directory = tmp_path / "q"
    with JobQueue(directory, now=clock) as queue:
        a, b, c, d = add(queue, 4, owner="ann")
        queue.move(c.id, to_index=0)
        queue.claim(W1, lease_seconds=30)  # c
        queue.finish(queue.claim(W1, lease_seconds=30).id, W1, outputs=[{"f": "a.png"}])  # a
        before = {j.id: j for j in queue.list().jobs}
        counts = queue.counts()
    with JobQueue(directory, now=clock) as queue:
        assert {j.id: j for j in queue.list().jobs} == before
        assert queue.counts() == counts
        assert queue.pending_ids() == [b.id, d.id]
        assert queue.list(owner="ann").total == 4
        assert queue.enqueue({"prompt": "next"})[0].seq == 5
        assert queue.get(a.id).outputs == [{"f": "a.png"}]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_committed_jobs_survive_kill_9(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    proc = _start(["crash", str(directory), "a", "b", "c"])
    proc.stdin.write("go\n")  # type: ignore[union-attr]
    proc.stdin.flush()  # type: ignore[union-attr]
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -9, err
    printed = [line.split()[1] for line in out.splitlines() if line != "ready"]
    with JobQueue(directory) as queue:
        assert [queue.get(job_id).state for job_id in printed] == [JobState.QUEUED] * 3
        assert queue.pending_ids() == printed


def test_prune_deletes_only_old_final_jobs(queue: JobQueue, clock: FakeClock) -> None:
    a, b, c, d = add(queue, 4)
    queue.enqueue({"prompt": "keyed"}, idempotency_key="k")
    queue.finish(queue.claim(W1, lease_seconds=5).id, W1, outputs=[])  # a
    queue.cancel(b.id)
    clock.advance(100)
    queue.claim(W1, lease_seconds=5)  # c, running
    assert queue.prune(older_than=clock.now - 50) == 2
    with pytest.raises(JobNotFound):
        queue.get(a.id)
    assert [j.id for j in queue.list().jobs][1:] == [d.id, c.id]
    assert queue.counts()[JobState.SUCCEEDED] == 0 and queue.list().total == 3
    keyed = queue.list(states=[JobState.QUEUED]).jobs[0]
    queue.cancel(keyed.id)
    clock.advance(100)
    assert queue.prune(older_than=clock.now) == 1
    assert queue.enqueue({"prompt": "keyed"}, idempotency_key="k")[1]  # the key is free again


# -- concurrency --------------------------------------------------------------------------------------


def test_threads_sharing_one_queue_claim_each_job_once(queue: JobQueue) -> None:
    queue.enqueue_many([{"params": {"i": i}} for i in range(120)])
    claimed: list[list[str]] = [[] for _ in range(4)]

    def drain(index: int) -> None:
        while (job := queue.claim(f"host:1:t{index}", lease_seconds=30)) is not None:
            claimed[index].append(job.id)
            queue.finish(job.id, f"host:1:t{index}", outputs=[])

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    ids = [job_id for ids in claimed for job_id in ids]
    assert len(ids) == len(set(ids)) == 120
    assert queue.counts()[JobState.SUCCEEDED] == 120


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HELPER), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _race(procs: list[subprocess.Popen[str]]) -> list[list[str]]:
    """Wait until every process has the queue open, release them together, collect their output lines."""
    try:
        for proc in procs:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line.strip() == "ready", proc.stderr.read()  # type: ignore[union-attr]
        for proc in procs:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            outputs.append(out.split("\n"))
        return [[line for line in out if line] for out in outputs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_processes_claim_each_job_exactly_once(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    with JobQueue(directory) as queue:
        jobs = queue.enqueue_many([{"params": {"i": i}} for i in range(200)])
    procs = [_start(["claim", str(directory), f"{socket.gethostname()}:{1000 + i}:p{i}"]) for i in range(4)]
    per_process = _race(procs)

    claimed = [job_id for ids in per_process for job_id in ids]
    assert len(claimed) == len(set(claimed)) == 200
    assert set(claimed) == {j.id for j in jobs}
    with JobQueue(directory) as queue:
        assert queue.counts()[JobState.SUCCEEDED] == 200
        assert all(j.attempts == 1 for j in queue.list(limit=200).jobs)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_processes_enqueueing_the_same_keys_make_one_job_each(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    JobQueue(directory).close()
    keys = [f"key-{i}" for i in range(40)]
    per_process = _race([_start(["enqueue", str(directory), *keys]) for _ in range(2)])

    results = [dict((key, (job_id, created)) for key, job_id, created in (line.split() for line in lines))
               for lines in per_process]
    for key in keys:
        (id_a, created_a), (id_b, created_b) = results[0][key], results[1][key]
        assert id_a == id_b
        assert sorted([created_a, created_b]) == ["0", "1"]
    with JobQueue(directory) as queue:
        assert queue.list(limit=100).total == 40 and len(queue.pending_ids()) == 40
