"""REDIS_URL and REDIS_PREFIX: what is accepted, what is refused with a sentence, the password never shown,
the store that ``open_store`` picks; and what only Redis has: its keys under the prefix, scripts that Redis
forgot, and failures turned into QueueError."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from comfy.errors import ConfigError, QueueError
from comfy.jobs.redis_store import RedisStore
from comfy.jobs.store import DiskStore, open_store
from comfy.settings import Settings, load_settings, redact_url
from tests.redis_support import RedisServer, redis_prefix, redis_server  # noqa: F401  (fixtures)


def settings(tmp_path: Path, **values: object) -> Settings:
    return load_settings(_env_file=None, data_dir=tmp_path / "data", **values)


def test_unset_means_diskcache_and_the_prefix_defaults_to_studio(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert s.redis_url is None and s.redis_prefix == "studio" and s.redis_url_redacted is None
    assert settings(tmp_path, redis_url="  ").redis_url is None


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://user:pw@cache.example:6380/2",
                                 "unix:///run/redis/redis.sock?db=1", "redis://:pw@redis"])
def test_accepted_urls(tmp_path: Path, url: str) -> None:
    assert settings(tmp_path, redis_url=url).redis_url.get_secret_value() == url


@pytest.mark.parametrize(("url", "says"), [
    ("http://127.0.0.1:6379", "must start with redis://, rediss:// (TLS) or unix://"),
    ("127.0.0.1:6379", "must start with redis://"),
    ("redis://", "must name a host"),
    ("redis://:s3cret@host:port/0", "port that is not a number"),
    ("unix://", "must name the socket file"),
])
def test_refused_urls_get_a_sentence_that_never_repeats_the_password(tmp_path: Path, url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, redis_url=url)
    assert "REDIS_URL" in str(info.value) and says in str(info.value) and "s3cret" not in str(info.value)


def test_the_password_is_a_secret_and_has_a_redacted_form(tmp_path: Path) -> None:
    s = settings(tmp_path, redis_url="rediss://studio:hunter2@cache.example:6380/0")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert s.redis_url_redacted == "rediss://studio:***@cache.example:6380/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    # redis-py reads a password from the query too (the usual way for a unix socket): hidden as well.
    assert redact_url("unix:///run/redis/redis.sock?password=hunter2&db=0") == \
        "unix:///run/redis/redis.sock?password=***&db=0"
    assert "hunter2" not in redact_url("rediss://h:6380/0?ssl_password=hunter2&password=hunter2")
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"


@pytest.mark.parametrize("prefix", ["", "two words", "x" * 65, "a/b"])
def test_a_bad_prefix_is_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_PREFIX: .*letters, digits"):
        settings(tmp_path, redis_prefix=prefix)


async def test_open_store_picks_redis_when_the_url_is_set(tmp_path: Path, redis_server: RedisServer,  # noqa: F811
                                                          redis_prefix: str) -> None:  # noqa: F811
    disk = open_store(settings(tmp_path))
    assert isinstance(disk, DiskStore) and disk.queue.directory == tmp_path / "data" / "queue"
    await disk.close()
    store = open_store(settings(tmp_path, redis_url=redis_server.url, redis_prefix=redis_prefix))
    try:
        assert isinstance(store, RedisStore) and store.prefix == redis_prefix
        job, _ = await store.enqueue({"prompt": "a"})
        assert store.key("job", job.id) == f"{redis_prefix}:job:{job.id}"
        keys = await store.client.keys("*")
        assert keys and all(key.startswith(redis_prefix + ":") for key in keys)
        other = RedisStore(store.client, prefix=redis_prefix + "-other", owns_client=False)
        assert (await other.list()).total == 0 and await other.pending_ids() == []
    finally:
        await store.close()


async def test_redis_that_cannot_be_reached_is_a_queue_error_with_a_sentence() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/0", prefix="nowhere")  # nothing listens on port 1
    try:
        with pytest.raises(QueueError, match="could not be reached"):
            await store.enqueue({"prompt": "a"})
        with pytest.raises(QueueError, match="could not be reached"):
            await store.get("0123456789abcdef")
    finally:
        await store.close()


async def test_scripts_that_redis_forgot_are_sent_again(redis_server: RedisServer, redis_prefix: str) -> None:  # noqa: F811
    store = RedisStore.from_url(redis_server.url, prefix=redis_prefix)
    try:
        await store.enqueue_many([{"params": {"i": i}} for i in range(4)])
        await store.client.script_flush()  # as after a restart or a failover to a fresh replica
        claimed = await asyncio.gather(*(store.claim(f"host:1:w{i}", lease_seconds=5) for i in range(3)))
        assert len({job.id for job in claimed}) == 3  # three calls in one pipeline, each NOSCRIPT, each redone
        await store.client.script_flush()
        assert (await store.claim("host:1:w9", lease_seconds=5)).seq == 4  # and a lone call
    finally:
        await store.close()
