"""S3 storage against moto's S3 server on loopback: the real wire protocol, no patched client, no Stubber.

Time: backoff, polling and the stop grace are constructor parameters set to milliseconds here; waits are
either events (``wait_uploaded``) or short polls bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import botocore.exceptions as boto_errors
import httpx
import pytest
from PIL import Image

from comfy.errors import QueueError, StorageError
from comfy.graph.params import GenerationParams
from comfy.jobs.queue import JobQueue
from comfy.jobs.records import Job, JobState
from comfy.service import Studio
from comfy.settings import Settings, load_settings
from comfy.storage.local import LocalStore
from comfy.storage.s3 import S3Store, _map_s3_errors, _Where, make_s3_client
from comfy.storage.uploader import PENDING_NOTE, Uploader
from tests.conftest import make_settings
from tests.fakes.comfyui import FakeComfy
from tests.fakes.s3_server import REGION, MotoS3

BUCKET = "studio-art"
KEY_ID, SECRET = "AKIASTUDIOTEST000001", "studio-secret-value-never-logged-0001"
FAST = {"backoff_base": 0.02, "backoff_cap": 0.1, "poll_interval": 0.05, "stop_grace": 2.0}


# -- fixtures --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoS3]:
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto(moto_server: MotoS3) -> Iterator[MotoS3]:
    if not moto_server.running:  # a test's outage ended with the server down
        moto_server.start()
    moto_server.reset()
    try:
        yield moto_server
    finally:
        if not moto_server.running:
            moto_server.start()
        moto_server.require_auth(False)


@pytest.fixture
def admin(moto: MotoS3) -> Any:
    return moto.admin()


@pytest.fixture
def bucket(admin: Any) -> str:
    admin.create_bucket(Bucket=BUCKET)
    # One version per PUT: "uploaded exactly once" is then "one version per key".
    admin.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return BUCKET


def s3_settings(tmp_path: Path, moto: MotoS3, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "s3_bucket": BUCKET, "s3_prefix": "studio", "s3_endpoint_url": moto.url, "s3_region": REGION,
        "s3_access_key_id": KEY_ID, "s3_secret_access_key": SECRET,
    }
    values.update(overrides)
    return make_settings(tmp_path, "http://127.0.0.1:9", **values)


def fast_client(settings: Settings) -> Any:
    """The client the studio builds, with botocore's own retries off: the uploader's backoff is under test."""
    return make_s3_client(settings, max_attempts=1, connect_timeout=1.0, read_timeout=5.0)


def make_uploader(settings: Settings, queue: JobQueue, **options: Any) -> Uploader:
    return Uploader.from_settings(settings, queue, client=fast_client(settings), **{**FAST, **options})


@asynccontextmanager
async def running(uploader: Uploader) -> AsyncIterator[Uploader]:
    stop = asyncio.Event()
    task = asyncio.create_task(uploader.run(stop))
    try:
        yield uploader
    finally:
        stop.set()
        await task


def png(seed: int, size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, 128)).save(out, format="PNG")
    return out.getvalue()


def succeeded_job(queue: JobQueue, settings: Settings, images: int = 2, seed: int = 42) -> Job:
    """A job that ran and saved ``images`` PNGs, as the worker leaves it (without ComfyUI)."""
    store = LocalStore(settings.outputs_dir, settings.inputs_dir)
    params = GenerationParams(prompt="a lighthouse at dawn", steps=3, seed=seed, width=64, height=64).to_dict()
    job, _ = queue.enqueue(params)
    claimed = queue.claim("test-worker", lease_seconds=60)
    assert claimed is not None and claimed.id == job.id
    metadata = {"job_id": job.id, "kind": "generate", "params": params, "prompt_id": "p-1",
                "backend": "http://user:pw@comfy:8188/?token=x", "execution_ms": 1234}
    stored = [store.save_output(job.id, i, png(seed + i), metadata=metadata) for i in range(images)]
    return queue.finish(job.id, "test-worker", outputs=[s.to_dict() for s in stored])


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    with JobQueue(tmp_path / "data" / "queue") as q:
        yield q


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def failed_try(uploader: Uploader, queue: JobQueue, job_id: str, attempts: int = 1) -> Any:
    """The upload status once ``attempts`` tries failed and the job's note says so."""
    def seen() -> Any:
        status = uploader.status(job_id)
        return status.attempts >= attempts and (queue.get(job_id).note or "").startswith(PENDING_NOTE) and status

    return await until(seen, what=f"{attempts} failed upload(s) of job {job_id}")


def versions(admin: Any, key: str) -> int:
    listing = admin.list_object_versions(Bucket=BUCKET, Prefix=key)
    return sum(1 for v in listing.get("Versions", []) if v["Key"] == key)


# -- uploads, keys, metadata, presigned URLs ---------------------------------------------------------------

async def test_uploads_images_and_metadata_with_keys_and_content_types(tmp_path, moto, admin, bucket, queue) -> None:
    settings = s3_settings(tmp_path, moto)
    job = succeeded_job(queue, settings, images=2)
    uploader = make_uploader(settings, queue)
    async with running(uploader):
        uploader.schedule(job)
        status = await uploader.wait_uploaded(job.id, timeout=20)
    uploader.close()

    base = f"studio/jobs/{job.id}"
    assert status.keys == (f"{base}/image_0.png", f"{base}/image_1.png")
    assert status.metadata_key == f"{base}/metadata.json"
    for index, key in enumerate(status.keys):
        obj = admin.get_object(Bucket=BUCKET, Key=key)
        assert obj["ContentType"] == "image/png"
        assert obj["Body"].read() == Path(job.outputs[index]["path"]).read_bytes()
        assert len(obj["Metadata"]["sha256"]) == 64
    meta_obj = admin.get_object(Bucket=BUCKET, Key=status.metadata_key)
    assert meta_obj["ContentType"] == "application/json"
    meta = json.loads(meta_obj["Body"].read())
    assert meta["job_id"] == job.id and meta["seed"] == 42 and meta["params"]["prompt"] == "a lighthouse at dawn"
    assert meta["prompt_id"] == job.prompt_id and meta["timings"]["execution_ms"] == 1234
    assert meta["timings"]["queued_at"] == job.queued_at and meta["timings"]["finished_at"] == job.finished_at
    assert [image["key"] for image in meta["images"]] == list(status.keys)
    assert meta["images"][0]["width"] == 64 and meta["images"][0]["content_type"] == "image/png"

    done = queue.get(job.id)  # the job records the object keys
    assert [o["s3_key"] for o in done.outputs] == list(status.keys) and done.note is None
    assert all(Path(o["path"]).exists() for o in done.outputs)  # S3_KEEP_LOCAL defaults to true


async def test_presigned_urls_download_the_same_bytes(tmp_path, moto, bucket, queue) -> None:
    settings = s3_settings(tmp_path, moto, s3_presign_seconds=120)
    job = succeeded_job(queue, settings, images=2)
    uploader = make_uploader(settings, queue)
    assert uploader.urls(job) == [o["path"] for o in job.outputs]  # not uploaded yet: the local files
    async with running(uploader):
        uploader.schedule(job)
        await uploader.wait_uploaded(job.id, timeout=20)
    urls = uploader.urls(queue.get(job.id))
    uploader.close()
    async with httpx.AsyncClient() as http:
        for url, output in zip(urls, job.outputs):
            assert url.startswith(f"{moto.url}/{BUCKET}/studio/jobs/{job.id}/") and "X-Amz-Expires=120" in url
            answer = await http.get(url)
            assert answer.status_code == 200 and answer.content == Path(output["path"]).read_bytes()


def test_keys_without_a_prefix_have_no_leading_slash() -> None:
    assert S3Store(None, BUCKET).key("0123456789abcdef", "image_0.png") == "jobs/0123456789abcdef/image_0.png"
    assert load_settings(_env_file=None, s3_bucket=BUCKET, s3_prefix="/").s3_prefix == ""
    assert load_settings(_env_file=None, s3_bucket=BUCKET, s3_prefix="/a/b/").s3_prefix == "a/b"
    with pytest.raises(StorageError):
        S3Store(None, BUCKET).key("../x", "image_0.png")


async def test_local_copies_are_deleted_only_once_uploaded(tmp_path, moto, bucket, queue) -> None:
    settings = s3_settings(tmp_path, moto, s3_keep_local=False)
    job = succeeded_job(queue, settings, images=2)
    uploader = make_uploader(settings, queue)
    async with running(uploader):
        uploader.schedule(job)
        await uploader.wait_uploaded(job.id, timeout=20)
        await until(lambda: not any(Path(o["path"]).exists() for o in job.outputs), what="local copies deleted")
    urls = uploader.urls(queue.get(job.id))
    uploader.close()
    async with httpx.AsyncClient() as http:
        assert [(await http.get(u)).content[:8] for u in urls] == [b"\x89PNG\r\n\x1a\n"] * 2


def test_large_files_stream_in_parts(tmp_path, moto, admin, bucket) -> None:
    settings = s3_settings(tmp_path, moto)
    client = fast_client(settings)
    calls: list[str] = []
    client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    big = tmp_path / "big.png"
    with big.open("wb") as handle:  # 17 MiB: three 8 MiB parts, read from the file as they go
        for _ in range(17):
            handle.write(os.urandom(1024 * 1024))
    key = S3Store.from_settings(settings, client=client).upload("0123456789abcdef", 3, big)
    assert key == "studio/jobs/0123456789abcdef/image_3.png"
    assert calls.count("UploadPart") == 3 and "CreateMultipartUpload" in calls and "PutObject" not in calls
    head = admin.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == big.stat().st_size and head["ContentType"] == "image/png"


# -- nothing lost: outage, wrong credentials, missing bucket, restart ----------------------------------

async def test_outage_in_the_middle_of_a_batch_then_every_image_exactly_once(tmp_path, moto, admin, bucket,
                                                                             queue) -> None:
    settings = s3_settings(tmp_path, moto)
    job = succeeded_job(queue, settings, images=4)
    client = fast_client(settings)
    puts: list[str] = []  # every PUT sent, failed ones included

    def before_put(params: dict[str, Any], **_: Any) -> None:
        puts.append(params["url_path"])

    def after_put(**_: Any) -> None:
        if moto.running and len(puts) == 1:
            moto.stop()  # the bucket goes away right after it stored the first image

    # botocore's public event hooks: the client is the real one, only observed.
    client.meta.events.register("before-call.s3.PutObject", before_put)
    client.meta.events.register("after-call.s3.PutObject", after_put)
    uploader = Uploader.from_settings(settings, queue, client=client, concurrency=1, **FAST)
    async with running(uploader):
        uploader.schedule(job)
        pending = await failed_try(uploader, queue, job.id, attempts=2)
        assert pending.state == "pending" and "Cannot reach S3 at" in pending.reason
        assert "S3_ENDPOINT_URL" in pending.reason
        note = queue.get(job.id).note
        assert note == f"{PENDING_NOTE}: {pending.reason}"
        assert uploader.health()["reachable"] is False and uploader.health()["pending"] == 1
        assert all(Path(o["path"]).exists() for o in job.outputs)  # the images stay on disk
        moto.start()  # same port; moto's state (bucket, first image) lived on in this process
        status = await uploader.wait_uploaded(job.id, timeout=20)
    uploader.close()

    assert status.attempts >= 2 and len(status.keys) == 4
    for key in [*status.keys, status.metadata_key]:
        assert versions(admin, key) == 1, key  # each object was PUT once, the first image included
    assert sum(p.endswith("/image_0.png") for p in puts) == 1  # never sent again after the outage
    assert sum(p.endswith("/image_1.png") for p in puts) >= 2  # failed during the outage, then sent
    done = queue.get(job.id)
    assert done.note is None and all(o.get("s3_key") for o in done.outputs)
    assert uploader.health()["reachable"] is True and uploader.health()["error"] is None


async def test_an_upload_whose_answer_was_lost_is_not_sent_again(tmp_path, moto, admin, bucket, queue,
                                                                   caplog) -> None:
    """The one window left: S3 stored an object but the uploader never recorded it (stopped mid-PUT here;
    a crash or a lost answer look the same). The next try looks before it sends."""
    caplog.set_level(logging.INFO, logger="comfy.storage.uploader")
    settings = s3_settings(tmp_path, moto)
    job = succeeded_job(queue, settings, images=2)
    client = fast_client(settings)
    second_put_sent = threading.Event()

    def slow_second_put(params: dict[str, Any], **_: Any) -> None:
        if params["url_path"].endswith("/image_1.png") and not second_put_sent.is_set():
            second_put_sent.set()
            time.sleep(0.3)  # still in flight when the uploader stops; it lands afterwards

    client.meta.events.register("before-call.s3.PutObject", slow_second_put)
    first = Uploader.from_settings(settings, queue, client=client, concurrency=1, **{**FAST, "stop_grace": 0.01})
    async with running(first):
        first.schedule(job)
        await until(second_put_sent.is_set, what="the second PUT")
    first.close()
    key = f"studio/jobs/{job.id}/image_1.png"
    await until(lambda: versions(admin, key) == 1, what="the cut-short PUT to land")
    assert first.status(job.id).state == "pending"  # it landed, but nobody recorded it

    again = make_uploader(settings, queue)
    async with running(again):
        status = await again.wait_uploaded(job.id, timeout=20)
    again.close()
    assert versions(admin, key) == 1 and status.keys[1] == key
    assert f"{key} is already in the bucket" in caplog.text


async def test_wrong_credentials_leave_the_upload_pending_with_what_to_fix(tmp_path, moto, bucket, queue) -> None:
    moto.require_auth()  # moto now checks signatures against its IAM users: this key is unknown
    settings = s3_settings(tmp_path, moto)
    job = succeeded_job(queue, settings, images=1)
    uploader = make_uploader(settings, queue)
    async with running(uploader):
        health = await until(lambda: (h := uploader.health())["checked_at"] and h, what="start-up check")
        assert health["configured"] and health["reachable"] is False
        assert "S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY" in health["error"]
        uploader.schedule(job)
        status = await failed_try(uploader, queue, job.id)
    uploader.close()
    assert status.state == "pending"
    assert status.reason == ("S3 refused the credentials (InvalidAccessKeyId): "
                             "check S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY.")
    assert queue.get(job.id).note == f"{PENDING_NOTE}: {status.reason}"
    assert Path(job.outputs[0]["path"]).exists()


async def test_missing_bucket_is_reported_then_uploads_once_it_exists(tmp_path, moto, admin, queue) -> None:
    settings = s3_settings(tmp_path, moto)
    job = succeeded_job(queue, settings, images=1)
    uploader = make_uploader(settings, queue)
    async with running(uploader):
        health = await until(lambda: (h := uploader.health())["checked_at"] and h, what="start-up check")
        expected = f"Bucket {BUCKET} does not exist at {moto.url}: create it, or fix S3_BUCKET"
        assert health["error"].startswith(expected)
        uploader.schedule(job)
        status = await failed_try(uploader, queue, job.id)
        assert status.reason.startswith(expected) and queue.get(job.id).note.startswith(PENDING_NOTE)
        admin.create_bucket(Bucket=BUCKET)
        status = await uploader.wait_uploaded(job.id, timeout=20)
    uploader.close()
    assert len(status.keys) == 1 and queue.get(job.id).note is None


async def test_a_restart_resumes_pending_uploads_and_finds_lost_ones(tmp_path, moto, admin, queue) -> None:
    settings = s3_settings(tmp_path, moto)
    first = succeeded_job(queue, settings, images=2, seed=1)
    first_uploader = make_uploader(settings, queue)
    async with running(first_uploader):  # no bucket yet: the upload stays pending
        first_uploader.schedule(first)
        await failed_try(first_uploader, queue, first.id)
    first_uploader.close()
    lost = succeeded_job(queue, settings, images=1, seed=9)  # its schedule() call never happened

    admin.create_bucket(Bucket=BUCKET)
    admin.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    again = make_uploader(settings, queue)  # the same data folder, a new process as far as it knows
    assert again.status(first.id).state == "pending"
    async with running(again):
        done = [await again.wait_uploaded(job.id, timeout=20) for job in (first, lost)]
        again.schedule(queue.get(first.id))  # scheduling again after success is a no-op
        await asyncio.sleep(0.1)
    again.close()
    assert [len(s.keys) for s in done] == [2, 1]
    for status in done:
        for key in [*status.keys, status.metadata_key]:
            assert versions(admin, key) == 1


async def test_secrets_are_never_logged(tmp_path, moto, admin, bucket, queue, caplog) -> None:
    iam = moto.admin("iam")
    iam.create_user(UserName="studio")
    iam.put_user_policy(UserName="studio", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="studio")["AccessKey"]
    moto.require_auth()
    wrong = "wrong-secret-also-never-logged-000000001"
    caplog.clear()  # botocore logged the CreateAccessKey answer above; from here on nothing may leak
    caplog.set_level(logging.DEBUG)

    job = succeeded_job(queue, s3_settings(tmp_path, moto), images=1)
    bad = s3_settings(tmp_path, moto, s3_access_key_id=key["AccessKeyId"], s3_secret_access_key=wrong)
    failing = make_uploader(bad, queue)
    async with running(failing):
        failing.schedule(job)
        status = await failed_try(failing, queue, job.id)
    failing.close()
    assert "SignatureDoesNotMatch" in status.reason and "S3_SECRET_ACCESS_KEY" in status.reason

    good = s3_settings(tmp_path, moto, s3_access_key_id=key["AccessKeyId"],
                       s3_secret_access_key=key["SecretAccessKey"])
    working = make_uploader(good, queue)
    async with running(working):
        await working.wait_uploaded(job.id, timeout=20)
        urls = working.urls(queue.get(job.id))
        health = working.health()
    working.close()

    logged = caplog.text
    assert "SignatureDoesNotMatch" in logged and "uploaded" in logged  # both attempts were logged
    assert any(r.name.startswith("botocore") and r.levelno == logging.DEBUG for r in caplog.records)
    assert key["AccessKeyId"] in logged  # the key id is not a secret (it signs every request in the clear)
    for secret in (wrong, key["SecretAccessKey"]):
        assert secret not in logged
        for settings in (bad, good):
            assert secret not in repr(settings) and secret not in str(settings)
        assert secret not in json.dumps(health) and secret not in "".join(urls)
        assert secret not in (queue.get(job.id).note or "") and secret not in status.reason


# -- through the studio, with the fake ComfyUI ------------------------------------------------------

async def test_studio_end_to_end_job_succeeds_then_is_uploaded(tmp_path, moto, admin, bucket,
                                                               fake_comfy: FakeComfy) -> None:
    settings = make_settings(tmp_path, fake_comfy.url, s3_bucket=BUCKET, s3_endpoint_url=moto.url,
                             s3_region=REGION, s3_access_key_id=KEY_ID, s3_secret_access_key=SECRET)
    async with Studio(settings, s3_client=fast_client(settings)) as studio:
        assert studio.uploader is not None
        studio.worker.poll_interval = 0.02
        await studio.start()
        [job] = await studio.submit(GenerationParams(prompt="a fox", steps=2, seed=7, width=64, height=64,
                                                     batch_size=2))
        done = await studio.wait(job.id, timeout=30)
        assert done.state is JobState.SUCCEEDED
        status = await studio.uploader.wait_uploaded(job.id, timeout=20)
        assert status.keys == tuple(f"jobs/{job.id}/image_{i}.png" for i in range(len(done.outputs)))
        urls = await studio.image_urls(job.id)
        assert (await studio.upload_status(job.id)).state == "uploaded"
        health = await studio.storage_health()
        assert health["storage"] == "s3" and health["reachable"] is True and health["pending"] == 0
        async with httpx.AsyncClient() as http:
            for url, output in zip(urls, done.outputs):
                assert url.startswith(moto.url)
                assert (await http.get(url)).content == Path(output["path"]).read_bytes()
        meta = json.loads(admin.get_object(Bucket=BUCKET, Key=status.metadata_key)["Body"].read())
        assert meta["params"]["seed"] == 7 and "KSampler" in {n["class_type"] for n in meta["workflow"].values()}
        assert meta["backend"] == fake_comfy.url and meta["timings"]["execution_ms"] is not None
        assert all(o["s3_key"] for o in (await studio.job(job.id)).outputs)


async def test_a_failed_schedule_never_fails_the_job_and_is_caught_up_at_the_next_start(
        tmp_path, moto, bucket, fake_comfy: FakeComfy, caplog) -> None:
    settings = make_settings(tmp_path, fake_comfy.url, s3_bucket=BUCKET, s3_endpoint_url=moto.url,
                             s3_region=REGION, s3_access_key_id=KEY_ID, s3_secret_access_key=SECRET)

    class Broken:
        def schedule(self, job: Job) -> None:
            raise RuntimeError("the backlog's disk is full")

    async with Studio(settings, s3_client=fast_client(settings)) as studio:
        studio.worker.uploader = Broken()  # type: ignore[assignment]
        studio.worker.poll_interval = 0.02
        await studio.start()
        [job] = await studio.submit(GenerationParams(prompt="x", steps=2, seed=3, width=64, height=64))
        assert (await studio.wait(job.id, timeout=30)).state is JobState.SUCCEEDED
        assert (await studio.upload_status(job.id)).state == "off"
    assert "Could not schedule the upload of job" in caplog.text
    async with Studio(settings, s3_client=fast_client(settings)) as studio:  # the next start
        await studio.start(worker=False)
        assert studio.uploader is not None
        status = await studio.uploader.wait_uploaded(job.id, timeout=20)
        assert status.keys == (f"jobs/{job.id}/image_0.png",)


async def test_studio_without_s3_shows_local_paths(tmp_path, studio: Studio) -> None:
    [job] = await studio.submit(GenerationParams(prompt="x", steps=2, seed=1, width=64, height=64))
    done = await studio.wait(job.id, timeout=30)
    assert studio.uploader is None and (await studio.image_urls(done)) == [done.outputs[0]["path"]]
    assert (await studio.upload_status(job.id)).state == "off"
    assert (await studio.storage_health()) == {"configured": False, "storage": "local", "reachable": None, "error": None}


# -- the pieces --------------------------------------------------------------------------------------

def test_every_botocore_error_maps_to_a_storage_error_without_the_secret() -> None:
    where = _Where(BUCKET, "http://s3.test", "S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY", secrets=(SECRET,))

    def subclasses(cls: type) -> Iterator[type]:
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in {*subclasses(boto_errors.BotoCoreError), boto_errors.BotoCoreError}:
        exc = cls.__new__(cls)
        Exception.__init__(exc, f"boom {SECRET}")
        with pytest.raises(StorageError) as info, _map_s3_errors(where, "upload x"):
            raise exc
        assert SECRET not in str(info.value) and str(info.value).endswith("."), cls
    for code, words in [("InvalidAccessKeyId", "refused the credentials"), ("NoSuchBucket", "does not exist at"),
                        ("AccessDenied", "refused access"), ("PermanentRedirect", "S3_REGION"),
                        ("SlowDown", "retried"), ("Weird", "Weird")]:
        error = boto_errors.ClientError({"Error": {"Code": code, "Message": f"m {SECRET}"}}, "PutObject")
        with pytest.raises(StorageError, match=words) as info, _map_s3_errors(where, "upload x"):
            raise error
        assert SECRET not in str(info.value)
    assert SECRET not in repr(where)


def test_settings_take_the_contract_names_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("S3_BUCKET", "my-bucket")
    monkeypatch.setenv("S3_PREFIX", "team/")
    monkeypatch.setenv("S3_ENDPOINT_URL", "https://s3.hf.co/my-org/")
    monkeypatch.setenv("S3_ADDRESSING_STYLE", "path")
    monkeypatch.setenv("S3_PRESIGN_SECONDS", "600")
    monkeypatch.setenv("S3_KEEP_LOCAL", "false")
    settings = load_settings(_env_file=None)
    assert (settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url) == ("my-bucket", "team",
                                                                                "https://s3.hf.co/my-org")
    assert settings.s3_presign_seconds == 600 and settings.s3_keep_local is False
    assert settings.s3_access_key_id is None  # boto3's own chain (AWS_ACCESS_KEY_ID, profiles, roles)
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "AKIAONLYTHEID")
    monkeypatch.setenv("S3_PRESIGN_SECONDS", "9999999")
    with pytest.raises(Exception) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert "S3_SECRET_ACCESS_KEY: " in message and "S3_PRESIGN_SECONDS: " in message
    assert "AKIAONLYTHEID" not in message


def test_annotate_changes_only_final_jobs(queue: JobQueue) -> None:
    job, _ = queue.enqueue({"prompt": "x"})
    with pytest.raises(QueueError):
        queue.annotate(job.id, note="nope")
    queue.claim("w", lease_seconds=60)
    queue.finish(job.id, "w", outputs=[{"key": f"{job.id}/image_0.png"}])
    noted = queue.annotate(job.id, note=f"{PENDING_NOTE}: reason")
    assert noted.note == f"{PENDING_NOTE}: reason" and noted.state is JobState.SUCCEEDED
    updated = queue.annotate(job.id, outputs=[{"key": "k", "s3_key": "jobs/k"}], note="")
    assert updated.note is None and updated.outputs[0]["s3_key"] == "jobs/k"
    assert queue.get(job.id) == updated
