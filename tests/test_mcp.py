"""STUDIO_MCP=1: the page's named endpoints are MCP tools, driven here by the mcp package's own client."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

pytest.importorskip("mcp")
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from app import mcp_on  # noqa: E402
from comfy import ConfigError, load_settings  # noqa: E402
from tests.fakes.comfyui import FakeComfy  # noqa: E402
from tests.ui_support import running_app  # noqa: E402


def _value(result) -> object:
    """A tool's answer: Gradio's MCP server sends a returned dict or list as its Python literal text."""
    return ast.literal_eval("".join(getattr(part, "text", "") for part in result.content))


@pytest.mark.slow
async def test_the_named_endpoints_are_mcp_tools_with_descriptions(tmp_path: Path) -> None:
    with FakeComfy(step_time=0.02, node_time=0.01) as fake, \
            running_app(fake.url, tmp_path / "data", STUDIO_MCP="1") as url:
        async with streamable_http_client(f"{url}/gradio_api/mcp/") as (read, write, _session_id):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = {tool.name: tool for tool in (await session.list_tools()).tools}
                assert {"generate", "job_status", "cancel", "jobs"} <= set(tools), sorted(tools)
                assert not any(name.startswith(("ui_", "watch", "restore")) for name in tools), sorted(tools)
                assert "Queue a generation" in tools["generate"].description
                assert "prompt" in tools["generate"].inputSchema["properties"]

                queued = _value((await session.call_tool(
                    "generate", {"prompt": "a lighthouse from an assistant", "steps": 2, "width": 64, "height": 64,
                                 "seed": 7})))
                [job_id] = queued["job_ids"]
                assert queued["seeds"] == [7]
                for _ in range(200):
                    listed = _value((await session.call_tool("jobs", {"state": "", "limit": 5})))
                    if listed[0]["state"] == "succeeded":
                        break
                    await asyncio.sleep(0.1)
                assert listed[0]["job_id"] == job_id and listed[0]["state"] == "succeeded"
                assert listed[0]["prompt"] == "a lighthouse from an assistant"
        seeds = [node["inputs"].get("seed") for node in fake.prompts[-1]["prompt"].values()]
        assert 7 in seeds  # the graph that ran has the seed asked for


def test_mcp_is_off_by_default_and_refused_with_logins_it_would_bypass(tmp_path: Path) -> None:
    assert mcp_on(load_settings(data_dir=str(tmp_path))) is False
    assert mcp_on(load_settings(data_dir=str(tmp_path), mcp=True)) is True
    with pytest.raises(ConfigError, match="AUTH_USERS"):
        mcp_on(load_settings(data_dir=str(tmp_path), mcp=True, auth_users="ann:pw"))
