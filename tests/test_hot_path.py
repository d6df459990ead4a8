"""The socket opened ahead of a job (ComfyClient.prepare_events / new_events) and the early end of a run.

Against the fake ComfyUI over real loopback sockets: the spare's client id is the one submitted with
the prompt, it is used once, a spare that died is replaced by a fresh socket, and a run whose history
is not written yet when ``execution_success`` arrives still ends at ``executing`` null.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from comfy.backends import protocol
from comfy.backends.client import ComfyClient, HistoryEntry
from comfy.errors import ServerUnavailable
from comfy.jobs.records import JobState
from comfy.service import Studio
from tests.conftest import wait_for
from tests.fakes.comfyui import FakeComfy
from tests.fixtures_util import workflow


@pytest.fixture
async def client(fake_comfy: FakeComfy):
    async with ComfyClient(fake_comfy.url, idle_check=0.5) as c:
        yield c


async def _spare_ready(client: ComfyClient) -> str:
    """Prepare the next socket and wait until it is open; its client id."""
    client.prepare_events()
    spare = client._spare
    assert spare is not None
    await asyncio.wait_for(spare._ready.wait(), 10)
    return spare.stream.client_id


async def _submit_and_follow(client: ComfyClient, stream, graph=None):
    queued = await client.queue_prompt(graph or workflow("txt2img_api"), client_id=stream.client_id)
    return await client.follow(queued.prompt_id, stream.client_id, stream=stream, deadline=None)


async def test_the_spare_is_used_once_and_its_client_id_is_the_one_submitted(
        client: ComfyClient, fake_comfy: FakeComfy) -> None:
    spare_id = await _spare_ready(client)
    await wait_for(lambda: spare_id in fake_comfy.client_ids)  # open, and registered under its own id
    # (the fake registers it in its own thread, a moment after the handshake)
    await client.run(workflow("txt2img_api"))  # meanwhile its broadcasts (status) reach the spare too
    async with client.new_events() as stream:
        assert stream.client_id == spare_id and client._spare is None
        result = await _submit_and_follow(client, stream)
    assert fake_comfy.prompts[-1]["client_id"] == spare_id
    assert len(result.outputs) == 1 and result.execution_ms is not None
    async with client.new_events() as again:  # nothing prepared: a fresh socket of a new id
        assert again.client_id != spare_id
        await _submit_and_follow(client, again)
    assert fake_comfy.prompts[-1]["client_id"] == again.client_id


async def test_a_spare_that_died_while_waiting_is_replaced(client: ComfyClient, fake_comfy: FakeComfy) -> None:
    dead_id = await _spare_ready(client)
    idle = client._spare._idle  # type: ignore[union-attr]
    await asyncio.to_thread(fake_comfy.restart)  # every socket is cut
    await asyncio.wait_for(asyncio.wait({idle}), 10)  # its reader saw the socket close
    async with client.new_events() as stream:
        assert stream.client_id != dead_id
        result = await _submit_and_follow(client, stream)
    assert (await client.history(result.prompt_id)).status_str == "success"


async def test_a_spare_that_cannot_open_leaves_the_error_to_the_job() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with ComfyClient(f"http://127.0.0.1:{port}") as client:
        client.prepare_events()
        with pytest.raises(ServerUnavailable):
            async with client.new_events():
                pass


async def test_closing_the_client_closes_its_sockets(fake_comfy: FakeComfy) -> None:
    client = ComfyClient(fake_comfy.url)
    await _spare_ready(client)
    async with client.new_events():
        client.prepare_events()  # a second one, still opening perhaps
        await client.aclose()
        assert not client._spares  # every socket's task has closed it and ended


class _LateHistory(ComfyClient):
    """ComfyUI may send ``execution_success`` before it writes the history: the first look finds nothing."""

    looked = 0

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        self.looked += 1
        return None if self.looked == 1 else await super().history(prompt_id)


async def test_a_history_not_yet_written_at_success_waits_for_the_end_signal(fake_comfy: FakeComfy) -> None:
    seen: list[protocol.Event] = []
    async with _LateHistory(fake_comfy.url) as client:
        result = await client.run(workflow("txt2img_api"), on_event=seen.append)
    assert len(result.outputs) == 1 and result.history.status_str == "success"
    assert any(isinstance(e, protocol.Executing) and e.node is None for e in seen)


async def test_jobs_store_the_client_id_of_the_socket_they_submitted_with(
        studio: Studio, fake_comfy: FakeComfy) -> None:
    jobs = [(await studio.submit({"prompt": f"a cat {n}", "steps": 2, "width": 64, "height": 64}))[0]
            for n in range(3)]
    done = [await studio.wait(job.id, timeout=30) for job in jobs]
    assert all(job.state is JobState.SUCCEEDED for job in done)
    submitted = {body["prompt_id"]: body["client_id"] for body in fake_comfy.prompts}
    assert [submitted[job.prompt_id] for job in done] == [job.client_id for job in done]
    assert len({job.client_id for job in done}) == 3  # a socket, and an id, per job
