"""Decoding real ComfyUI frames and error bodies (from tests/fixtures/comfyui)."""

from __future__ import annotations

import json
import struct

import pytest

from comfy.backends import protocol
from comfy.errors import ProtocolError
from tests.fixtures_util import COMFY, http, received_frames, transcript

TRANSCRIPTS = sorted(p.stem for p in (COMFY / "ws").glob("*.jsonl"))
KNOWN = (protocol.Status, protocol.FeatureFlags, protocol.ExecutionStart, protocol.ExecutionCached,
         protocol.Executing, protocol.Progress, protocol.ProgressState, protocol.Executed,
         protocol.ExecutionSuccess, protocol.ExecutionErrorEvent, protocol.ExecutionInterruptedEvent)


def decode(frame: str | bytes) -> protocol.Event:
    return protocol.decode_text(frame) if isinstance(frame, str) else protocol.decode_binary(frame)


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_every_captured_frame_decodes_to_a_known_event(name: str) -> None:
    events = [decode(frame) for frame in received_frames(name)]
    assert events, name
    for event in events:
        assert isinstance(event, (*KNOWN, protocol.Preview)), event


def test_legacy_previews_are_jpeg_without_prompt_id() -> None:
    previews = [decode(f) for f in received_frames("txt2img_full_legacy_client") if isinstance(f, bytes)]
    assert len(previews) == 3  # one per sampler step, the last included
    for preview in previews:
        assert preview.mime == "image/jpeg" and preview.image[:3] == b"\xff\xd8\xff"
        assert preview.prompt_id is None


def test_feature_flag_previews_carry_prompt_and_node() -> None:
    events = [decode(f) for f in received_frames("txt2img_feature_flags_client")]
    start = next(e for e in events if isinstance(e, protocol.ExecutionStart))
    previews = [e for e in events if isinstance(e, protocol.Preview)]
    assert previews and all(p.prompt_id == start.prompt_id and p.node_id == "3" for p in previews)
    assert all(p.image[:3] == b"\xff\xd8\xff" for p in previews)
    assert isinstance(events[1], protocol.FeatureFlags)


def test_run_ends_with_executing_null_after_success() -> None:
    events = [decode(f) for f in received_frames("txt2img_full_legacy_client")]
    kinds = [type(e).__name__ for e in events]
    assert isinstance(events[0], protocol.Status) and events[0].sid
    last = events[-1]
    assert isinstance(last, protocol.Executing) and last.finished and last.prompt_id
    assert kinds.index("ExecutionSuccess") < len(kinds) - 1
    executed = next(e for e in events if isinstance(e, protocol.Executed))
    assert executed.outputs == (protocol.OutputRef("ComfyUI_00001_.png", "", "output", "9"),)
    progress = [e for e in events if isinstance(e, protocol.Progress)]
    assert [(p.value, p.max) for p in progress] == [(1, 3), (2, 3), (3, 3)]


def test_execution_error_fields() -> None:
    error = next(e for e in map(decode, received_frames("execution_error"))
                 if isinstance(e, protocol.ExecutionErrorEvent))
    assert error.node_id == "8" and error.node_type == "VAEDecode" and error.exception_type == "RuntimeError"
    assert "16 channels" in error.exception_message and error.traceback


def test_interrupt_event() -> None:
    event = next(e for e in map(decode, received_frames("interrupt"))
                 if isinstance(e, protocol.ExecutionInterruptedEvent))
    assert event.node_id == "3" and event.node_type == "KSampler"


def test_reconnect_catch_up_executing_has_no_prompt_id() -> None:
    events = [decode(f) for f in received_frames("reconnect_same_clientId_new_socket")]
    catch_up = next(e for e in events if isinstance(e, protocol.Executing))
    assert catch_up.prompt_id is None and catch_up.node == "3"


def test_preview_with_png_format_and_progress_text() -> None:
    png = protocol.decode_binary(struct.pack(">II", 1, 2) + b"\x89PNG....")
    assert isinstance(png, protocol.Preview) and png.mime == "image/png"
    text = protocol.decode_binary(struct.pack(">II", 3, 2) + b"12hello")
    assert text == protocol.ProgressText("12", "hello")


@pytest.mark.parametrize("frame", [b"", b"\x00\x00\x00\x04", struct.pack(">II", 4, 999) + b"{}",
                                   struct.pack(">II", 4, 2) + b"no"])
def test_broken_binary_frames_raise_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_binary(frame)


@pytest.mark.parametrize("text", ["not json", "[]", '{"data": {}}', '{"type": "status", "data": {"status": 1}}'])
def test_broken_text_frames_raise_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_text(text)


def test_unknown_message_types_are_kept_not_fatal() -> None:
    event = protocol.decode_text(json.dumps({"type": "crystools.monitor", "data": {"cpu": 3}}))
    assert event == protocol.UnknownEvent("crystools.monitor", {"cpu": 3})


REJECTIONS = sorted(p.stem for p in (COMFY / "http").glob("post_prompt_400_*.json"))


@pytest.mark.parametrize("name", REJECTIONS)
def test_every_captured_rejection_becomes_a_sentence(name: str) -> None:
    envelope = http(name)
    body = envelope["response"]["body"]
    graph = (envelope["request"].get("body") or {}).get("prompt") if isinstance(envelope["request"].get("body"), dict) else None
    message, problems = protocol.describe_rejection(body, graph if isinstance(graph, dict) else None)
    assert message.startswith("ComfyUI rejected the workflow: ")
    assert problems
    for node_id, entry in body["node_errors"].items():
        assert f"node {node_id}" in message
        for err in entry["errors"]:
            name_ = (err.get("extra_info") or {}).get("input_name")
            if name_:
                assert name_ in message


def test_rejection_sentences_read_well() -> None:
    env = http("post_prompt_400_unknown_ckpt_name")
    message, problems = protocol.describe_rejection(env["response"]["body"], env["request"]["body"]["prompt"])
    assert message == ("ComfyUI rejected the workflow: node 4 \"Load Checkpoint\" (CheckpointLoaderSimple): "
                       "ckpt_name 'no-such-model.safetensors' is not available on the server; choose one of: "
                       "random-sd15.safetensors.")
    assert problems[0].input_name == "ckpt_name" and problems[0].kind == "value_not_in_list"
    env = http("post_prompt_400_value_out_of_range")
    message, problems = protocol.describe_rejection(env["response"]["body"], env["request"]["body"]["prompt"])
    assert "cfg: Value 1000.0 bigger than max of 100.0" in message and "steps: Value 0 smaller than min of 1" in message
    assert len(problems) == 2
    env = http("post_prompt_400_unknown_node_class")
    message, _ = protocol.describe_rejection(env["response"]["body"])
    assert "NoSuchSamplerNode does not exist" in message and "Install the custom node" in message
    env = http("post_prompt_400_no_output_nodes")
    message, _ = protocol.describe_rejection(env["response"]["body"])
    assert "no output node" in message


def test_transcripts_are_complete() -> None:
    # Guards the copy in tests/fixtures: the legacy run must hold the whole run, start to end.
    records = transcript("txt2img_full_legacy_client")
    assert records[0]["dir"] == "meta" and any(r.get("dir") == "http" for r in records)
