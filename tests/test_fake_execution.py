"""The fake ComfyUI's runs against the captured protocol: every comparison is with a fixture file.

The fake is only useful if it is faithful, so these tests replay the requests the capture made and
compare what comes back, frame by frame, with what the real ComfyUI 0.8.0 sent (prompt ids,
timestamps and the socket id are normalised; nothing else is). Real sockets, httpx + httpx_ws.
The HTTP side alone is in test_fake_http.py, the shared helpers in fake_support.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketNetworkError

from tests.fake_support import (
    Frame,
    captured_frames,
    captured_requests,
    chunks_fixture,
    connect,
    end_of,
    envelope,
    is_type,
    norm,
    norm_history,
    png_chunks,
    png_size,
    recv,
    recv_until,
    run,
    shape,
    submit,
    texts_of,
    upload_test_input,
    with_seed,
)
from tests.fakes.comfyui import FakeComfy, load_workflow

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fake() -> Iterator[FakeComfy]:
    with FakeComfy() as server:
        yield server


@pytest.fixture
async def http(fake: FakeComfy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as client:
        yield client


# --------------------------------------------------------------------------- runs vs transcripts


async def test_txt2img_legacy_then_feature_flags_then_cached_rerun_replay_the_captures(
    fake: FakeComfy, http: httpx.AsyncClient
) -> None:
    hello = {"type": "feature_flags", "data": {"supports_preview_metadata": True, "supports_manager_v4_ui": True}}
    ids = []
    for name, send_hello in (
        ("txt2img_full_legacy_client", False),
        ("txt2img_feature_flags_client", True),
        ("txt2img_cached_rerun", True),
    ):
        body = captured_requests(name)[0]
        async with connect(fake, http, body["client_id"]) as ws:
            if send_hello:
                await ws.send_json(hello)
            frames = [await recv(ws)] + ([await recv(ws)] if send_hello else [])
            ids.append(await submit(http, body))
            frames += await recv_until(ws, end_of(ids[-1]))
        assert [shape(f) for f in frames] == captured_frames(name), name

    histories = ["history_by_id_txt2img", "history_by_id_txt2img_with_workflow", "history_by_id_cached"]
    for prompt_id, history in zip(ids, histories):
        response = await http.get(f"/history/{prompt_id}")
        assert norm_history(response.json()) == norm_history(envelope(history)["response"]["body"])
    assert sorted(fake.file_names()) == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]  # the rerun wrote nothing


async def test_output_png_has_comfyuis_chunks_and_view_headers(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, captured_requests("txt2img_full_legacy_client")[0])
    await run(http, fake, captured_requests("txt2img_feature_flags_client")[0])
    captured = envelope("view_output_png")
    response = await http.get(captured["request"]["path"])
    for header in ("Content-Type", "Content-Disposition", "Accept-Ranges"):
        assert response.headers[header] == captured["response"]["headers"][header]
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', response.headers["etag"])
    assert response.headers["last-modified"].endswith(" GMT")
    assert int(response.headers["content-length"]) == len(response.content)
    for filename, fixture in (("ComfyUI_00001_.png", "txt2img_output.png"),
                              ("ComfyUI_00002_.png", "txt2img_output_with_workflow_chunk.png")):
        data = (await http.get("/view", params={"filename": filename, "subfolder": "", "type": "output"})).content
        order, texts = png_chunks(data)
        expected = chunks_fixture(fixture)
        assert order == expected["chunk_order"]
        assert texts == texts_of(fixture)
        assert png_size(data) == (64, 64)
    jpeg = await http.get(envelope("view_preview_param_jpeg")["request"]["path"])
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:3] == b"\xff\xd8\xff"


async def test_view_delay_slows_the_answer(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, {"prompt": load_workflow("no_weights")})
    fake.view_delay = 0.3
    started = time.monotonic()
    response = await http.get("/view", params={"filename": "noweights_00001_.png", "type": "output"})
    assert response.status_code == 200 and time.monotonic() - started >= 0.3


async def test_interrupt_replays_the_capture(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, {"prompt": load_workflow("txt2img")})  # so that 4, 5, 6, 7 are cached, as captured
    fake.step_time = 0.2
    body = captured_requests("interrupt")[0]
    async with connect(fake, http, body["client_id"]) as ws:
        frames = [await recv(ws)]
        prompt_id = await submit(http, body)
        frames += await recv_until(ws, is_type("progress", value=2))
        frames.append(await recv(ws))  # the step's preview
        assert (await http.post("/interrupt")).status_code == 200
        frames += await recv_until(ws, end_of(prompt_id))
    assert [shape(f) for f in frames] == captured_frames("interrupt")
    history = (await http.get(f"/history/{prompt_id}")).json()
    assert norm_history(history) == norm_history(envelope("history_by_id_interrupted")["response"]["body"])
    assert fake.interrupts == [None]


async def test_execution_error_replays_the_capture(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, {"prompt": load_workflow("txt2img")})  # the checkpoint loader is cached, as captured
    body = captured_requests("execution_error")[0]
    async with connect(fake, http, body["client_id"]) as ws:
        frames = [await recv(ws)]
        prompt_id = await submit(http, body)
        frames += await recv_until(ws, end_of(prompt_id))
    assert [shape(f) for f in frames] == captured_frames("execution_error")
    history = (await http.get(f"/history/{prompt_id}")).json()
    assert norm_history(history) == norm_history(envelope("history_by_id_execution_error")["response"]["body"])


async def test_fail_next_fails_vae_decode_once(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.fail_next = True
    async with connect(fake, http, "failer") as ws:
        await recv(ws)
        prompt_id = await submit(http, {"prompt": load_workflow("txt2img"), "client_id": "failer"})
        frames = await recv_until(ws, end_of(prompt_id))
    kinds = [f["type"] for f in frames if isinstance(f, dict)]
    assert kinds[-4:] == ["executing", "execution_error", "status", "executing"] and "executed" not in kinds
    error = frames[-3]["data"]
    assert (error["node_id"], error["node_type"], error["executed"]) == ("8", "VAEDecode", ["4", "5", "7", "6", "3"])
    captured = envelope("history_by_id_execution_error")["response"]["body"].popitem()[1]
    assert error.keys() == captured["status"]["messages"][2][1].keys()
    status = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["status"]
    assert (status["status_str"], status["completed"], fake.fail_next) == ("error", False, False)
    await run(http, fake, {"prompt": load_workflow("txt2img")})  # next one is fine (and not cached: 8 failed)
    assert fake.file_names() == ["ComfyUI_00001_.png"]


async def test_no_weights_run_replays_the_capture(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    body = captured_requests("no_weights")[0]
    async with connect(fake, http, body["client_id"]) as ws:
        frames = [await recv(ws)]
        prompt_id = await submit(http, body)
        frames += await recv_until(ws, end_of(prompt_id))
    assert [shape(f) for f in frames] == captured_frames("no_weights")
    history = (await http.get(f"/history/{prompt_id}")).json()
    assert norm_history(history) == norm_history(envelope("history_by_id_no_weights")["response"]["body"])
    temp = history[prompt_id]["outputs"]["5"]["images"][0]
    view = await http.get("/view", params=temp)
    assert view.status_code == 200 and png_chunks(view.content)[0] == ["IHDR", "tEXt", "IDAT", "IEND"]
    saved = (await http.get("/view", params={"filename": "noweights_00001_.png", "type": "output"})).content
    assert png_chunks(saved)[1] == texts_of("no_weights_output.png")


async def test_img2img_then_observer_without_client_id_replay_the_captures(
    fake: FakeComfy, http: httpx.AsyncClient
) -> None:
    await upload_test_input(http, overwrite="true")
    body = captured_requests("img2img")[0]
    async with connect(fake, http, body["client_id"]) as ws:
        frames = [await recv(ws)]
        prompt_id = await submit(http, body)
        frames += await recv_until(ws, end_of(prompt_id))
    assert [shape(f) for f in frames] == captured_frames("img2img")
    history = (await http.get(f"/history/{prompt_id}")).json()
    assert norm_history(history) == norm_history(envelope("history_by_id_img2img")["response"]["body"])
    output = (await http.get("/view", params={"filename": "img2img_00001_.png", "type": "output"})).content
    texts = png_chunks(output)[1]
    assert texts == texts_of("img2img_output.png")  # LoadImage's injected is_changed hash included
    assert png_size(output) == (64, 64)  # the uploaded image's size

    observer = captured_frames("observer_of_prompt_without_client_id", counters=True)
    async with connect(fake, http, "observer") as ws:
        frames = [await recv(ws)]
        await submit(http, captured_requests("observer_of_prompt_without_client_id")[0])
        while len(frames) < len(observer):
            frames.append(await recv(ws))
        await fake.wait_idle_async()
        with pytest.raises(TimeoutError):  # and nothing else: no lifecycle event, no executing null
            await ws.receive(timeout=0.2)
    assert [shape(f, counters=True) for f in frames] == observer


async def test_two_prompts_back_to_back_replay_the_capture(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, {"prompt": load_workflow("runtime_error")})  # leaves only node 4 cached, as captured
    fake.node_time = 0.05
    first, second = captured_requests("two_prompts_back_to_back")
    async with connect(fake, http, first["client_id"]) as ws:
        frames = [await recv(ws)]
        await submit(http, first)
        frames += await recv_until(ws, is_type("executing", node="7"))
        second_id = await submit(http, second)
        frames += await recv_until(ws, end_of(second_id))
    assert [shape(f, counters=True) for f in frames] == captured_frames("two_prompts_back_to_back", counters=True)


async def test_queue_delete_clear_and_targeted_interrupt_replay_the_capture(
    fake: FakeComfy, http: httpx.AsyncClient
) -> None:
    await run(http, fake, {"prompt": load_workflow("txt2img")})
    fake.step_time = 0.3
    bodies = captured_requests("queue_delete_clear_interrupt")
    async with connect(fake, http, bodies[0]["client_id"]) as ws:
        frames = [await recv(ws)]
        ids = [await submit(http, bodies[0])]
        frames += await recv_until(ws, is_type("executing", node="3"))
        ids += [await submit(http, body) for body in bodies[1:]]
        frames += await recv_until(ws, is_type("progress", value=1))
        frames.append(await recv(ws))
        queues = [(await http.get("/queue")).json()]
        await http.post("/queue", json={"delete": [ids[1]]})
        queues.append((await http.get("/queue")).json())
        await http.post("/queue", json={"clear": True})
        queues.append((await http.get("/queue")).json())
        await http.post("/interrupt", json={"prompt_id": ids[2]})  # not running: ignored
        await http.post("/interrupt", json={"prompt_id": ids[0]})
        frames += await recv_until(ws, end_of(ids[0]))
    assert [shape(f) for f in frames] == captured_frames("queue_delete_clear_interrupt")
    for queue, name in zip(queues, ["queue_before_delete", "queue_after_delete", "queue_after_clear"]):
        expected = norm(envelope(name)["response"]["body"])
        for items in (*expected.values(), *(queue_got := norm(queue)).values()):
            for item in items:
                item[0] = "<number>"
        assert queue_got == expected
    assert fake.deleted == [ids[1]]
    assert fake.interrupts == [{"prompt_id": ids[2]}, {"prompt_id": ids[0]}]
    deleted = envelope("history_by_id_deleted_from_queue")["response"]["body"]
    assert (await http.get(f"/history/{ids[1]}")).json() == deleted


async def test_reconnect_with_same_client_id_replays_the_capture(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, {"prompt": load_workflow("txt2img")})
    fake.step_time = 0.15
    body = captured_requests("reconnect_same_clientId_old_socket")[0]
    async with connect(fake, http, body["client_id"]) as old:
        old_frames = [await recv(old)]
        prompt_id = await submit(http, body)
        old_frames += await recv_until(old, is_type("progress", value=2))
        old_frames.append(await recv(old))
        async with connect(fake, http, body["client_id"]) as new:
            new_frames = await recv_until(new, end_of(prompt_id))
            with pytest.raises(TimeoutError):  # the old socket is open but silent
                await old.receive(timeout=0.2)
    assert [shape(f) for f in old_frames] == captured_frames("reconnect_same_clientId_old_socket")
    assert [shape(f, counters=True) for f in new_frames] == captured_frames(
        "reconnect_same_clientId_new_socket", counters=True
    )


async def test_closing_the_original_socket_after_a_takeover_orphans_the_new_one_as_comfyui_does(
    fake: FakeComfy, http: httpx.AsyncClient
) -> None:
    # server.py pops the sid when ANY socket with that id closes, so once the original socket goes
    # away the new one is not registered at all: neither its client's events nor status broadcasts.
    async with connect(fake, http, "twice") as original, connect(fake, http, "twice") as new:
        await recv(original)
        await recv(new)
        await original.close()
        while "twice" in fake.client_ids:  # nothing to await: the server handles the close on its own
            await asyncio.sleep(0.01)
        await run(http, fake, {"prompt": load_workflow("no_weights"), "client_id": "twice"})
        with pytest.raises(TimeoutError):
            await new.receive(timeout=0.2)
    async with connect(fake, http, "twice") as again:  # connecting again registers the id again
        assert (await recv(again))["data"]["sid"] == "twice"
        assert fake.client_ids == ["twice"]


async def test_a_late_feature_flags_hello_is_ignored(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    async with connect(fake, http, "late") as ws:
        await ws.send_json({"type": "hello"})
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        await recv(ws)
        prompt_id = await submit(http, {"prompt": load_workflow("txt2img"), "client_id": "late"})
        frames = await recv_until(ws, end_of(prompt_id))
    assert "feature_flags" not in [f["type"] for f in frames if isinstance(f, dict)]
    assert {f[:8] for f in frames if isinstance(f, bytes)} == {b"\x00\x00\x00\x01\x00\x00\x00\x01"}


async def test_interrupting_a_prompt_without_client_id_is_broadcast(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.step_time = 0.2
    async with connect(fake, http, "watcher") as ws:
        await recv(ws)
        prompt_id = await submit(http, {"prompt": with_seed(9, steps=20)})
        await recv_until(ws, is_type("progress", value=1))
        await http.post("/interrupt", json={"prompt_id": prompt_id})
        frames = await recv_until(ws, is_type("status", status={"exec_info": {"queue_remaining": 0}}))
    assert [f["type"] for f in frames if isinstance(f, dict)][-2:] == ["execution_interrupted", "status"]
    assert frames[-2]["data"]["node_type"] == "KSampler"


async def test_previews_can_be_switched_off(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.previews = False
    async with connect(fake, http, "nopreview") as ws:
        await recv(ws)
        prompt_id = await submit(http, {"prompt": load_workflow("txt2img"), "client_id": "nopreview"})
        frames = await recv_until(ws, end_of(prompt_id))
    assert not [f for f in frames if isinstance(f, bytes)]
    assert [f["data"]["value"] for f in frames if isinstance(f, dict) and f["type"] == "progress"] == [1, 2, 3]


# --------------------------------------------------------------------------- process-level faults


async def test_restart_forgets_queue_and_history_on_the_same_port(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    done = await run(http, fake, {"prompt": load_workflow("no_weights")})
    url = fake.url
    fake.hold = True
    await submit(http, {"prompt": with_seed(5)})
    async with connect(fake, http, "restart") as ws:
        await recv(ws)
        fake.restart()
        with pytest.raises((WebSocketNetworkError, WebSocketDisconnect)):
            await recv(ws)
    assert fake.url == url
    assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
    assert (await http.get(f"/history/{done}")).json() == {}
    fake.hold = False
    again = await http.post("/prompt", json={"prompt": load_workflow("no_weights")})
    assert again.json()["number"] == 0  # a new process counts from zero
    await fake.wait_idle_async()
    assert "noweights_00002_.png" in fake.file_names()  # output/ survived: the counter continues


async def test_restart_without_losing_the_queue_lets_the_run_finish(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.step_time = 0.1
    prompt_id = await submit(http, {"prompt": load_workflow("txt2img")})
    fake.restart(lose_queue=False)
    await fake.wait_idle_async()
    assert (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["status"]["status_str"] == "success"


async def test_drop_sockets_after_cuts_sockets_but_the_run_completes(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.drop_sockets_after = 5
    received: list[Frame] = []
    async with connect(fake, http, "dropme") as ws:
        received.append(await recv(ws))
        prompt_id = await submit(http, {"prompt": load_workflow("txt2img"), "client_id": "dropme"})
        with pytest.raises((WebSocketNetworkError, WebSocketDisconnect)):
            while True:
                received.append(await recv(ws))
    assert len(received) == 1 + 5
    await fake.wait_idle_async()
    assert fake.drop_sockets_after is None
    assert (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["status"]["status_str"] == "success"
    async with connect(fake, http, "dropme") as ws:  # and reconnecting works
        assert (await recv(ws))["data"]["sid"] == "dropme"


async def test_stop_refuses_connections_and_start_serves_the_same_url_again() -> None:
    fake = FakeComfy().start()
    url = fake.url
    fake.stop()
    fake.stop()
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/prompt")
        fake.start()
        try:
            assert (await client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}
            assert fake.url == url
        finally:
            fake.stop()
