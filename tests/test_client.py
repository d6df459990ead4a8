"""ComfyClient against the fake ComfyUI over real loopback HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from comfy.backends import protocol
from comfy.backends.client import ComfyClient
from comfy.errors import (
    ExecutionFailed,
    ExecutionInterrupted,
    PromptLost,
    PromptRejected,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
)
from tests.fakes.comfyui import FakeComfy
from tests.fixtures_util import image, workflow


@pytest.fixture
async def client(fake_comfy: FakeComfy):
    async with ComfyClient(fake_comfy.url, idle_check=0.5) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_stats_and_models(client: ComfyClient) -> None:
    stats = await client.system_stats()
    assert stats["system"]["comfyui_version"] == "0.8.0"
    assert await client.checkpoints() == ["random-sd15.safetensors"]
    assert "euler" in await client.samplers() and "karras" in await client.schedulers()
    first = await client.object_info()
    assert await client.object_info() is first  # cached
    assert await client.object_info(refresh=True) is not first


async def test_run_streams_progress_previews_and_returns_outputs(client: ComfyClient, fake_comfy: FakeComfy) -> None:
    events: list[protocol.Event] = []
    result = await client.run(workflow("txt2img_api"), on_event=events.append)
    kinds = {type(e).__name__ for e in events}
    assert {"ExecutionStart", "Executing", "Progress", "Preview", "Executed", "ExecutionSuccess"} <= kinds
    assert [(e.value, e.max) for e in events if isinstance(e, protocol.Progress)] == [(1, 3), (2, 3), (3, 3)]
    previews = [e for e in events if isinstance(e, protocol.Preview)]
    assert len(previews) == 3 and previews[0].prompt_id == result.prompt_id  # feature flags: type 4 frames
    assert len(result.outputs) == 1 and result.outputs[0].type == "output"
    data = await client.download(result.outputs[0])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.execution_ms is not None and result.execution_ms >= 0
    body = fake_comfy.prompts[-1]
    assert body["client_id"] and body["prompt_id"] == result.prompt_id
    assert body["extra_data"]["preview_method"] == "auto"


async def test_prompt_rejected_becomes_sentences(client: ComfyClient) -> None:
    graph = workflow("txt2img_api")
    graph["4"]["inputs"]["ckpt_name"] = "no-such-model.safetensors"
    with pytest.raises(PromptRejected) as info:
        await client.run(graph)
    assert "node 4" in str(info.value) and "ckpt_name" in str(info.value)
    assert info.value.problems[0].node_id == "4" and not PromptRejected.retryable


async def test_scripted_rejection_fixture(client: ComfyClient, fake_comfy: FakeComfy) -> None:
    fake_comfy.reject_next = "value_out_of_range"
    with pytest.raises(PromptRejected) as info:
        await client.queue_prompt(workflow("txt2img_api"), client_id="c1")
    assert {p.input_name for p in info.value.problems} == {"cfg", "steps"}


async def test_execution_error(client: ComfyClient, fake_comfy: FakeComfy) -> None:
    fake_comfy.fail_next = True
    with pytest.raises(ExecutionFailed) as info:
        await client.run(workflow("txt2img_api"))
    assert info.value.node_type and info.value.exception_type == "RuntimeError"
    assert "ComfyUI failed while running node" in str(info.value)


async def test_captured_runtime_error_workflow(client: ComfyClient) -> None:
    with pytest.raises(ExecutionFailed) as info:
        await client.run(workflow("runtime_error_api"))
    assert info.value.node_type == "VAEDecode"


async def test_interrupt_ends_the_run(client: ComfyClient, fake_comfy: FakeComfy) -> None:
    fake_comfy.step_time = 0.05
    graph = workflow("txt2img_api")
    graph["3"]["inputs"]["steps"] = 40
    started = asyncio.Event()

    def on_event(event: protocol.Event) -> None:
        if isinstance(event, protocol.Progress):
            started.set()

    run = asyncio.create_task(client.run(graph, on_event=on_event))
    await asyncio.wait_for(started.wait(), 10)
    await client.interrupt()
    with pytest.raises(ExecutionInterrupted):
        await run


async def test_cancel_removes_a_pending_prompt(client: ComfyClient, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    queued = await client.queue_prompt(workflow("txt2img_api"), client_id="c1")
    running, pending = await client.queue()
    assert queued.prompt_id in pending
    await client.cancel(queued.prompt_id)
    assert fake_comfy.deleted == [queued.prompt_id]
    assert (await client.queue())[1] == []
    fake_comfy.hold = False


async def test_cancel_never_interrupts_while_its_prompt_is_still_pending(client: ComfyClient, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    fake_comfy.ignore_deletes = True  # the delete does not take
    queued = await client.queue_prompt(workflow("txt2img_api"), client_id="c1")
    assert await client.cancel(queued.prompt_id) is False
    # An interrupt now would stop whatever runs on a ComfyUI without targeted interrupts: someone else's.
    assert fake_comfy.interrupts == []
    fake_comfy.ignore_deletes = False
    await client.cancel(queued.prompt_id)
    assert (await client.queue())[1] == []
    fake_comfy.hold = False


async def test_dropped_socket_reconnects_and_reconciles(client: ComfyClient, fake_comfy: FakeComfy) -> None:
    fake_comfy.drop_sockets_after = 8
    result = await client.run(workflow("txt2img_api"))
    assert len(result.outputs) == 1
    assert (await client.history(result.prompt_id)).status_str == "success"


async def test_server_restart_loses_the_prompt(client: ComfyClient, fake_comfy: FakeComfy) -> None:
    fake_comfy.step_time = 0.05
    graph = workflow("txt2img_api")
    graph["3"]["inputs"]["steps"] = 40
    started = asyncio.Event()
    run = asyncio.create_task(client.run(graph, on_event=lambda e: started.set()
                                         if isinstance(e, protocol.Progress) else None))
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.to_thread(fake_comfy.restart)
    with pytest.raises(PromptLost):
        await asyncio.wait_for(run, 20)


async def test_unreachable_server() -> None:
    async with ComfyClient(f"http://127.0.0.1:{_free_port()}") as client:
        with pytest.raises(ServerUnavailable, match="Cannot reach"):
            await client.system_stats()
        with pytest.raises(ServerUnavailable):
            await client.run(workflow("txt2img_api"))


async def test_slow_view_times_out(fake_comfy: FakeComfy) -> None:
    async with ComfyClient(fake_comfy.url, timeout=httpx.Timeout(0.3)) as client:
        result = await client.run(workflow("txt2img_api"))
        fake_comfy.view_delay = 2.0
        with pytest.raises(ServerTimeout):
            await client.download(result.outputs[0])


async def test_missing_file_is_a_clear_error(client: ComfyClient) -> None:
    with pytest.raises(ServerError, match="no file"):
        await client.download(protocol.OutputRef("nope.png"))


async def test_upload_image_and_img2img(client: ComfyClient) -> None:
    name = await client.upload_image(image("protocol-test-input.png"), "protocol-test-input.png", overwrite=True)
    assert name == "protocol-test-input.png"
    graph = workflow("img2img_api")
    result = await client.run(graph)
    assert result.outputs and result.outputs[0].filename.startswith("img2img")


async def test_cached_rerun_still_reports_outputs(client: ComfyClient) -> None:
    first = await client.run(workflow("txt2img_api"))
    again = await client.run(workflow("txt2img_api"))
    assert again.outputs == first.outputs  # ComfyUI replays the old filename, writes nothing new


async def test_reattach_after_the_submitter_went_away(client: ComfyClient, fake_comfy: FakeComfy) -> None:
    fake_comfy.step_time = 0.02
    queued = await client.queue_prompt(workflow("txt2img_api"), client_id="gone-client")
    result = await client.follow(queued.prompt_id, "gone-client")
    assert result.prompt_id == queued.prompt_id and result.outputs


async def test_proxy_headers_are_sent(fake_comfy: FakeComfy) -> None:
    seen: list[str | None] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.headers.get("authorization"))

    http = httpx.AsyncClient(headers={"Authorization": "Bearer t0ken"}, event_hooks={"request": [hook]})
    async with ComfyClient(fake_comfy.url, http=http) as client:
        await client.run(workflow("txt2img_api"))
    await http.aclose()
    assert seen and all(value == "Bearer t0ken" for value in seen)
