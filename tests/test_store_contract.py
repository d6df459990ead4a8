"""One queue contract, two stores: every promise of the job queue, proven on diskcache and on Redis alike.

Each test runs twice, ``[disk]`` (:class:`DiskStore` over JobQueue) and ``[redis]`` (:class:`RedisStore` on
a real redis-server started by tests/redis_support.py). No sleeps: time is a fake clock handed to the store.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from comfy.errors import IdempotencyConflict, JobNotFound, QueueError
from comfy.jobs.records import Job, JobPage, JobState
from comfy.jobs.redis_store import RedisStore
from comfy.jobs.store import DiskStore, JobStore
from tests.redis_support import RedisServer, redis_prefix, redis_server  # noqa: F401  (fixtures)

MakeStore = Callable[..., Awaitable[JobStore]]
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


@pytest.fixture(params=["disk", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[MakeStore]:
    """Open stores on one shared queue (each its own connection), all closed at the end."""
    opened: list[JobStore] = []
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix: str = request.getfixturevalue("redis_prefix")

    async def make(max_attempts: int = 3) -> JobStore:
        if request.param == "disk":
            store: JobStore = DiskStore.open(tmp_path / "queue", now=clock, max_attempts=max_attempts)
        else:
            store = RedisStore.from_url(server.url, prefix=prefix, now=clock, max_attempts=max_attempts)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> JobStore:
    return await make_store()


async def add(store: JobStore, n: int, **kwargs) -> list[Job]:
    return [(await store.enqueue({"prompt": f"job {i}", "seed": i}, **kwargs))[0] for i in range(n)]


def ids(page: JobPage) -> list[str]:
    return [job.id for job in page.jobs]


async def test_the_store_has_every_method_of_the_contract(store: JobStore) -> None:
    assert isinstance(store, JobStore)


# -- records ----------------------------------------------------------------------------------------


async def test_enqueue_makes_a_plain_queued_record_that_reads_back_equal(store: JobStore, clock: FakeClock) -> None:
    params = {"prompt": "a cat, ünïcode \"quoted\", a NUL \x00 too", "steps": 20, "cfg": 6.5,
              "nested": {"empty": [], "o": {}}}
    job, created = await store.enqueue(params, owner="ann", idempotency_key="k1")
    assert created and len(job.id) == 16 and job.seq == 1
    assert job.state is JobState.QUEUED and (job.owner, job.queued_at, job.attempts) == ("ann", clock.now, 0)
    assert await store.get(job.id) == job and (await store.get(job.id)).params == params
    graph = {"1": {"class_type": "KSampler", "inputs": {"seed": 5}}}
    flow, _ = await store.enqueue({"images": {}}, kind="workflow", workflow=graph)
    assert (await store.get(flow.id)).workflow == graph and flow.seq == 2
    for unknown in ("0000000000000000", "not-an-id"):
        with pytest.raises(JobNotFound) as info:
            await store.get(unknown)
        assert info.value.job_id == unknown
    with pytest.raises(QueueError):
        await store.enqueue({}, kind="nonsense")


async def test_a_store_opened_again_finds_everything(make_store: MakeStore) -> None:
    first = await make_store()
    a, b, c, d = await add(first, 4, owner="ann")
    await first.move(c.id, to_index=0)
    await first.claim(W1, lease_seconds=30)  # c
    await first.finish((await first.claim(W1, lease_seconds=30)).id, W1, outputs=[{"f": "a.png"}])  # a
    before, counts = await first.list(), await first.counts()
    await first.close()
    again = await make_store()
    assert await again.list() == before and await again.counts() == counts
    assert await again.pending_ids() == [b.id, d.id] and (await again.list(owner="ann")).total == 4
    assert (await again.enqueue({"prompt": "next"}))[0].seq == 5
    assert (await again.get(a.id)).outputs == [{"f": "a.png"}]


# -- idempotency ------------------------------------------------------------------------------------


async def test_idempotency_same_request_same_job_other_request_conflicts(store: JobStore) -> None:
    job, created = await store.enqueue({"prompt": "a", "seed": 1}, idempotency_key="k", owner="ann")
    again, created_again = await store.enqueue({"seed": 1, "prompt": "a"}, idempotency_key="k", owner="ann")
    assert created and not created_again and again == job
    with pytest.raises(IdempotencyConflict) as info:
        await store.enqueue({"prompt": "b"}, idempotency_key="k", owner="ann")
    assert (info.value.key, info.value.job_id) == ("k", job.id)

    done = await store.finish((await store.claim(W1, lease_seconds=5)).id, W1, outputs=[{"f": 1}])
    late, created_late = await store.enqueue({"prompt": "a", "seed": 1}, idempotency_key="k", owner="ann")
    assert not created_late and late == done and late.state is JobState.SUCCEEDED
    assert (await store.list()).total == 1


async def test_idempotency_keys_are_scoped_per_owner(store: JobStore) -> None:
    ann, _ = await store.enqueue({"prompt": "a"}, idempotency_key="k", owner="ann")
    bob, bob_created = await store.enqueue({"prompt": "different"}, idempotency_key="k", owner="bob")
    anon, anon_created = await store.enqueue({"prompt": "a"}, idempotency_key="k")
    assert bob_created and anon_created and len({ann.id, bob.id, anon.id}) == 3


async def test_enqueue_many_is_one_batch_and_a_conflict_rolls_it_all_back(store: JobStore) -> None:
    first, _ = await store.enqueue({"i": 0}, idempotency_key="k0")
    jobs = await store.enqueue_many([
        {"params": {"i": 0}, "idempotency_key": "k0"},
        {"params": {"i": 1}},
        {"params": {"i": 2}, "idempotency_key": "k2"},
        {"params": {"i": 2}, "idempotency_key": "k2"},
    ])
    assert jobs[0].id == first.id and jobs[2].id == jobs[3].id
    assert await store.pending_ids() == [first.id, jobs[1].id, jobs[2].id]
    with pytest.raises(IdempotencyConflict):
        await store.enqueue_many([{"params": {"i": 3}}, {"params": {"i": 99}, "idempotency_key": "k2"}])
    assert len(await store.pending_ids()) == 3 and (await store.list()).total == 3


async def test_concurrent_enqueues_of_one_key_make_one_job(make_store: MakeStore) -> None:
    stores = [await make_store() for _ in range(4)]
    results = await asyncio.gather(*(s.enqueue({"p": 1}, idempotency_key="same", owner="ann") for s in stores))
    assert len({job.id for job, _ in results}) == 1 and sum(created for _, created in results) == 1


# -- order, claims, cancels -------------------------------------------------------------------------


async def test_claim_is_fifo_and_leases_the_job(store: JobStore, clock: FakeClock) -> None:
    jobs = await add(store, 3)
    claimed = [await store.claim(W1, lease_seconds=30) for _ in range(3)]
    assert [j.id for j in claimed if j] == [j.id for j in jobs]
    job = claimed[0]
    assert job is not None and job.state is JobState.RUNNING and job.attempts == 1
    assert (job.lease_owner, job.lease_expires, job.started_at) == (W1, clock.now + 30, clock.now)
    assert await store.claim(W1, lease_seconds=30) is None and await store.pending_ids() == []
    (later,) = await add(store, 1)
    assert (await store.claim(W1, lease_seconds=30)).id == later.id


@pytest.mark.parametrize("connections", ["one each", "one shared"])
async def test_each_job_is_claimed_exactly_once_by_8_concurrent_workers(make_store: MakeStore,
                                                                       connections: str) -> None:
    """Eight workers with a store each (separate connections), or eight tasks sharing one store (on Redis,
    their calls then travel together in pipelines)."""
    first = await make_store()
    jobs = await first.enqueue_many([{"params": {"i": i}} for i in range(200)])
    workers = [await make_store() for _ in range(8)] if connections == "one each" else [first] * 8
    claimed: list[list[str]] = [[] for _ in workers]

    async def drain(index: int, store: JobStore) -> None:
        me = f"host:1:w{index}"
        while (job := await store.claim(me, lease_seconds=30)) is not None:
            claimed[index].append(job.id)
            await store.finish(job.id, me, outputs=[])

    await asyncio.gather(*(drain(i, s) for i, s in enumerate(workers)))
    every = [job_id for mine in claimed for job_id in mine]
    assert len(every) == len(set(every)) == 200 and set(every) == {j.id for j in jobs}
    assert (await first.counts())[JobState.SUCCEEDED] == 200
    assert all(j.attempts == 1 for j in (await first.list(limit=200)).jobs)


async def test_claim_matching_skips_what_it_refuses_and_never_takes_a_job_twice(make_store: MakeStore) -> None:
    store, other = await make_store(), await make_store()
    a, b, c = await add(store, 3)
    taken = await store.claim_matching(W1, lease_seconds=5, accept=lambda job: job.params["seed"] == 1)
    assert taken is not None and taken.id == b.id and await store.pending_ids() == [a.id, c.id]
    assert await store.claim_matching(W1, lease_seconds=5, accept=lambda job: False) is None
    both = await asyncio.gather(*(s.claim_matching(w, lease_seconds=5, accept=lambda job: job.id == c.id)
                                  for s, w in ((store, W1), (other, W2))))
    assert [job.id for job in both if job] == [c.id]


async def test_move_to_front_position_and_pending_ids(store: JobStore) -> None:
    a, b, c, d = await add(store, 4)
    assert [await store.position(j.id) for j in (a, b, c, d)] == [0, 1, 2, 3]
    await store.move(d.id, to_index=0)
    await store.move(a.id, to_index=99)  # clamped to the back
    await store.move(c.id, to_index=1)
    assert await store.pending_ids() == [d.id, c.id, b.id, a.id] and await store.position(a.id) == 3
    assert (await store.claim(W1, lease_seconds=5)).id == d.id
    assert await store.position(d.id) is None and await store.position("ffffffffffffffff") is None
    with pytest.raises(QueueError):
        await store.move(d.id, to_index=0)
    with pytest.raises(JobNotFound):
        await store.move("ffffffffffffffff", to_index=0)
    assert [(await store.claim(W1, lease_seconds=5)).id for _ in range(3)] == [c.id, b.id, a.id]


async def test_run_order_matches_a_model_through_many_operations(store: JobStore) -> None:
    rng = random.Random(7)
    model = [j.id for j in await store.enqueue_many([{"params": {"i": i}} for i in range(300)])]
    for step in range(300):
        op = rng.random()
        if op < 0.3:
            model.append((await store.enqueue({"step": step}))[0].id)
        elif op < 0.55 and model:
            job_id = model.pop(rng.randrange(len(model)))
            to = rng.randrange(len(model) + 2)
            await store.move(job_id, to_index=to)
            model.insert(min(to, len(model)), job_id)
        elif op < 0.7 and model:
            await store.cancel(model.pop(rng.randrange(len(model))))
        elif op < 0.85 and model:
            job = await store.claim(W1, lease_seconds=5)
            assert job is not None and job.id == model.pop(0)
            if rng.random() < 0.5:
                back = await store.fail(job.id, W1, code="server_unavailable", message="down", retry=True)
                if back.state is JobState.QUEUED:
                    model.insert(0, job.id)
        elif model:
            target = model[rng.randrange(len(model))]
            assert await store.position(target) == model.index(target)
    assert await store.pending_ids() == model
    assert (await store.counts())[JobState.QUEUED] == len(model)


async def test_cancel_a_queued_job_at_once(store: JobStore, clock: FakeClock) -> None:
    a, b = await add(store, 2)
    cancelled = await store.cancel(a.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at == clock.now and cancelled.cancel_requested
    assert await store.pending_ids() == [b.id] and await store.position(a.id) is None
    assert (await store.claim(W1, lease_seconds=5)).id == b.id and await store.claim(W1, lease_seconds=5) is None
    with pytest.raises(JobNotFound):
        await store.cancel("ffffffffffffffff")


async def test_cancel_a_running_job_asks_its_worker_then_mark_cancelled(store: JobStore) -> None:
    (a,) = await add(store, 1)
    await store.claim(W1, lease_seconds=5)
    asked = await store.cancel(a.id)
    assert asked.state is JobState.RUNNING and asked.cancel_requested
    assert await store.cancel(a.id) == asked
    with pytest.raises(QueueError, match="lease lost"):
        await store.mark_cancelled(a.id, W2)
    done = await store.mark_cancelled(a.id, W1)
    assert done.state is JobState.CANCELLED and done.finished_at is not None and done.lease_owner is None
    assert await store.expired() == []


async def test_a_final_job_never_changes(store: JobStore, clock: FakeClock) -> None:
    (a,) = await add(store, 1)
    await store.claim(W1, lease_seconds=5)
    done = await store.finish(a.id, W1, outputs=[{"filename": "a.png"}])
    assert done.state is JobState.SUCCEEDED and done.progress == 1.0 and done.finished_at == clock.now
    clock.advance(10)
    assert await store.cancel(a.id) == done
    assert await store.finish(a.id, W1, outputs=[{"filename": "other.png"}]) == done
    assert await store.fail(a.id, W1, code="x", message="y") == done
    assert await store.update(a.id, W1, progress=0.5) == done
    assert await store.mark_cancelled(a.id) == done
    assert await store.requeue(a.id, W1, "again") == done and await store.release(a.id, W1, "again") == done


# -- failures, retries, attempts ----------------------------------------------------------------------


async def test_retry_goes_back_to_the_front_until_attempts_run_out(store: JobStore, clock: FakeClock) -> None:
    a, b = await add(store, 2)
    first_start = clock.now + 1
    for attempt in (1, 2):
        clock.advance(1)
        job = await store.claim(W1, lease_seconds=5)
        assert job.id == a.id and job.attempts == attempt
        await store.update(a.id, W1, prompt_id=f"p{attempt}", progress=0.4)
        back = await store.fail(a.id, W1, code="server_unavailable", message="ComfyUI is down", retry=True)
        assert back.state is JobState.QUEUED and back.error is None and back.note == "ComfyUI is down"
        assert (back.prompt_id, back.lease_owner, back.progress) == (None, None, 0.0)
        assert await store.pending_ids() == [a.id, b.id]
    clock.advance(1)
    job = await store.claim(W1, lease_seconds=5)
    assert job.attempts == 3 and job.started_at == first_start
    failed = await store.fail(a.id, W1, code="server_unavailable", message="still down", retry=True)
    assert failed.state is JobState.FAILED and failed.error == {"code": "server_unavailable", "message": "still down"}
    assert await store.pending_ids() == [b.id]


async def test_fail_without_retry_or_with_a_cancel_pending_is_final(store: JobStore) -> None:
    a, b = await add(store, 2)
    await store.claim(W1, lease_seconds=5)
    assert (await store.fail(a.id, W1, code="prompt_rejected", message="bad")).state is JobState.FAILED
    await store.claim(W1, lease_seconds=5)
    await store.cancel(b.id)
    assert (await store.fail(b.id, W1, code="interrupted", message="x", retry=True)).state is JobState.FAILED


async def test_release_may_keep_the_runs_handle_and_enqueue_keeps_a_note(store: JobStore) -> None:
    a, _created = await store.enqueue({"prompt": "a"}, note="resized to 512×512")
    assert a.note == "resized to 512×512" and (await store.get(a.id)).note == a.note
    await store.claim(W1, lease_seconds=5)
    await store.update(a.id, W1, prompt_id="run-1", backend="http://gpu:8188")
    kept = await store.release(a.id, W1, "waiting for the backend", keep_handle=True)
    assert (kept.state, kept.prompt_id, kept.backend) == (JobState.QUEUED, "run-1", "http://gpu:8188")
    await store.claim(W1, lease_seconds=5)
    dropped = await store.release(a.id, W1, "waiting for the backend")
    assert dropped.prompt_id is None


async def test_release_gives_the_attempt_back_and_requeue_runs_out(make_store: MakeStore) -> None:
    store = await make_store(max_attempts=1)
    a, b = await add(store, 2)
    await store.claim(W1, lease_seconds=5)
    released = await store.release(a.id, W1, "waiting for the backend")
    assert released.state is JobState.QUEUED and released.attempts == 0 and released.note == "waiting for the backend"
    assert await store.pending_ids() == [a.id, b.id]
    await store.claim(W1, lease_seconds=5)
    failed = await store.requeue(a.id, W1, "the worker died twice")
    assert failed.state is JobState.FAILED and failed.error == {"code": "worker_lost", "message": "the worker died twice"}
    await store.claim(W1, lease_seconds=5)
    await store.cancel(b.id)
    assert (await store.release(b.id, W1, "x")).state is JobState.CANCELLED


async def test_a_worker_without_the_lease_cannot_report_and_update_sets_run_details_only(store: JobStore) -> None:
    (a,) = await add(store, 1)
    with pytest.raises(QueueError):
        await store.update(a.id, W1, progress=0.1)  # queued: nobody holds it
    await store.claim(W1, lease_seconds=5)
    for call in (store.update(a.id, W2, progress=0.1), store.finish(a.id, W2, outputs=[]),
                 store.fail(a.id, W2, code="x", message="y"), store.requeue(a.id, W2, "r")):
        with pytest.raises(QueueError, match="lease lost"):
            await call
    job = await store.update(a.id, W1, progress=1.7, node="KSampler", step=3, steps=20, prompt_id="p",
                             backend="http://gpu:8188", note="sampling")
    assert (job.progress, job.node, job.step, job.steps, job.prompt_id, job.backend) == (
        1.0, "KSampler", 3, 20, "p", "http://gpu:8188")
    assert await store.get(a.id) == job and job.state is JobState.RUNNING
    with pytest.raises(QueueError):
        await store.update(a.id, W1, state="succeeded")
    assert (await store.update(a.id, note="waiting")).note == "waiting"


async def test_annotate_changes_only_a_final_job(store: JobStore) -> None:
    (a,) = await add(store, 1)
    await store.claim(W1, lease_seconds=5)
    with pytest.raises(QueueError, match="only a finished job"):
        await store.annotate(a.id, note="too early")
    await store.finish(a.id, W1, outputs=[{"filename": "a.png"}])
    noted = await store.annotate(a.id, outputs=[{"key": "jobs/a.png"}], note="upload pending: offline")
    assert (noted.outputs, noted.note, noted.state) == ([{"key": "jobs/a.png"}], "upload pending: offline",
                                                        JobState.SUCCEEDED)
    cleared = await store.annotate(a.id, note="")
    assert cleared.note is None and cleared.outputs == noted.outputs and await store.get(a.id) == cleared
    with pytest.raises(JobNotFound):
        await store.annotate("ffffffffffffffff", note="x")


# -- leases -------------------------------------------------------------------------------------------


async def test_lease_renew_expiry_and_take_over(store: JobStore, clock: FakeClock) -> None:
    (a,) = await add(store, 1)
    await store.claim(W1, lease_seconds=10)
    clock.advance(8)
    assert await store.renew(a.id, W1, lease_seconds=10)
    assert (await store.get(a.id)).lease_expires == clock.now + 10
    assert not await store.renew(a.id, W2, lease_seconds=10)
    clock.advance(9)
    assert await store.expired() == []
    assert await store.take_over(a.id, W2, lease_seconds=10) is None  # W1's lease is live

    clock.advance(2)
    assert [j.id for j in await store.expired()] == [a.id]
    taken = await store.take_over(a.id, W2, lease_seconds=10)
    assert taken is not None and taken.lease_owner == W2 and taken.attempts == 1
    assert taken.note == "re-attached after restart" and taken.lease_expires == clock.now + 10
    assert await store.take_over(a.id, W1, lease_seconds=10) is None
    assert not await store.renew(a.id, W1, lease_seconds=10)
    with pytest.raises(QueueError, match="lease lost"):
        await store.update(a.id, W1, progress=0.5)
    assert await store.expired() == []
    assert (await store.finish(a.id, W2, outputs=[])).state is JobState.SUCCEEDED
    assert not await store.renew(a.id, W2, lease_seconds=10)
    assert await store.take_over(a.id, W2, lease_seconds=10, force=True) is None  # not running any more


async def test_force_take_over_and_requeue_to_the_front(store: JobStore) -> None:
    a, b = await add(store, 2)
    await store.claim(W1, lease_seconds=60)
    taken = await store.take_over(a.id, W2, lease_seconds=60, force=True)  # W1 is known dead
    assert taken is not None and taken.lease_owner == W2
    back = await store.requeue(a.id, W2, "re-queued after a worker restart")
    assert back.state is JobState.QUEUED and back.attempts == 1 and back.note == "re-queued after a worker restart"
    assert await store.pending_ids() == [a.id, b.id]


async def test_two_workers_taking_over_one_expired_job_only_one_wins(make_store: MakeStore, clock: FakeClock) -> None:
    store, other = await make_store(), await make_store()
    (a,) = await add(store, 1)
    await store.claim("host-z:9:dead", lease_seconds=5)
    clock.advance(10)
    results = await asyncio.gather(store.take_over(a.id, W1, lease_seconds=30),
                                   other.take_over(a.id, W2, lease_seconds=30))
    winners = [job.lease_owner for job in results if job is not None]
    assert len(winners) == 1 and (await store.get(a.id)).lease_owner == winners[0]


# -- listing, counts, retention -------------------------------------------------------------------------


async def test_list_is_newest_first_and_pages_with_a_cursor(store: JobStore) -> None:
    jobs = await store.enqueue_many([{"params": {"i": i}} for i in range(300)], owner="ann")
    seen: list[int] = []
    page = JobPage([], None, None)
    while True:
        page = await store.list(limit=64, cursor=page.next_cursor)
        seen += [j.seq for j in page.jobs]
        if page.next_cursor is None:
            break
    assert seen == [j.seq for j in reversed(jobs)] == list(range(300, 0, -1)) and page.total == 300
    first = await store.list(limit=3)
    assert [j.seq for j in first.jobs] == [300, 299, 298] and first.next_cursor == 298
    assert (await store.list(limit=300)).next_cursor is None
    assert (await store.list(limit=0)) == JobPage([], None, 300)


async def test_list_filters_by_state_and_owner_with_totals_and_counts(store: JobStore) -> None:
    ann = await add(store, 4, owner="ann")
    bob = await add(store, 3, owner="bob")
    anon = await add(store, 1)
    running = await store.claim(W1, lease_seconds=30)  # ann[0]
    await store.finish((await store.claim(W1, lease_seconds=30)).id, W1, outputs=[])  # ann[1]
    await store.cancel(bob[0].id)

    assert running is not None and running.id == ann[0].id
    queued = await store.list(states=[JobState.QUEUED])
    assert ids(queued) == [anon[0].id, bob[2].id, bob[1].id, ann[3].id, ann[2].id] and queued.total == 5
    assert ids(await store.list(states={JobState.RUNNING, JobState.SUCCEEDED})) == [ann[1].id, ann[0].id]
    mine = await store.list(owner="ann")
    assert ids(mine) == [j.id for j in reversed(ann)] and mine.total == 4
    page = await store.list(owner="ann", states=[JobState.QUEUED], limit=1)
    assert ids(page) == [ann[3].id] and page.total == 2
    assert ids(await store.list(owner="ann", states=[JobState.QUEUED], cursor=page.next_cursor)) == [ann[2].id]
    assert (await store.list(owner="bob", states=["cancelled"])).total == 1
    assert await store.list(owner="nobody") == JobPage([], None, 0)
    assert await store.list(states=[]) == JobPage([], None, 0)
    assert await store.counts() == {JobState.QUEUED: 5, JobState.RUNNING: 1, JobState.SUCCEEDED: 1,
                                    JobState.FAILED: 0, JobState.CANCELLED: 1}


async def test_unowned_lists_only_the_jobs_nobody_owns_with_their_total(store: JobStore, clock: FakeClock) -> None:
    """The open page beside API keys lists its own jobs (owner None), not a key's: ``unowned``."""
    key = await add(store, 2, owner="key:0123456789abcdef")
    page = await add(store, 3)
    await store.cancel(page[0].id)
    await store.finish((await store.claim(W1, lease_seconds=30)).id, W1, outputs=[])  # key[0]
    mine = await store.list(unowned=True)
    assert ids(mine) == [j.id for j in reversed(page)] and mine.total == 3
    first = await store.list(unowned=True, limit=2)
    assert ids(first) == [page[2].id, page[1].id] and first.total == 3
    assert ids(await store.list(unowned=True, cursor=first.next_cursor)) == [page[0].id]
    queued = await store.list(unowned=True, states=[JobState.QUEUED])
    assert ids(queued) == [page[2].id, page[1].id] and queued.total == 2
    assert (await store.list()).total == 5 and (await store.list(owner=key[0].owner)).total == 2
    clock.advance(100)
    assert await store.prune(older_than=clock.now) == 2  # page[0] and key[0]
    assert (await store.list(unowned=True)).total == 2


async def test_prune_deletes_only_old_final_jobs_and_frees_their_keys(store: JobStore, clock: FakeClock) -> None:
    a, b, c, d = await add(store, 4, owner="ann")
    await store.enqueue({"prompt": "keyed"}, idempotency_key="k")
    await store.finish((await store.claim(W1, lease_seconds=5)).id, W1, outputs=[])  # a
    await store.cancel(b.id)
    clock.advance(100)
    await store.claim(W1, lease_seconds=5)  # c, running
    assert await store.prune(older_than=clock.now - 50, batch=1) == 2
    with pytest.raises(JobNotFound):
        await store.get(a.id)
    assert ids(await store.list())[1:] == [d.id, c.id] and (await store.list()).total == 3
    assert (await store.list(owner="ann")).total == 2
    assert (await store.counts())[JobState.SUCCEEDED] == 0 and (await store.counts())[JobState.CANCELLED] == 0
    keyed = (await store.list(states=[JobState.QUEUED])).jobs[0]
    await store.cancel(keyed.id)
    clock.advance(100)
    assert await store.prune(older_than=clock.now) == 1
    assert (await store.enqueue({"prompt": "keyed"}, idempotency_key="k"))[1]  # the key is free again
    assert {j.state for j in (await store.list()).jobs} == {JobState.QUEUED, JobState.RUNNING}
