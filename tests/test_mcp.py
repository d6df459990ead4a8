"""STUDIO_MCP=1: the page's named endpoints are MCP tools, driven here by the mcp package's own client,
behind the REST API's logins and keys."""

from __future__ import annotations

import ast
import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

pytest.importorskip("mcp")
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from app import mcp_on  # noqa: E402
from comfy import load_settings  # noqa: E402
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


def test_mcp_is_off_by_default(tmp_path: Path) -> None:
    assert mcp_on(load_settings(data_dir=str(tmp_path))) is False
    assert mcp_on(load_settings(data_dir=str(tmp_path), mcp=True)) is True
    assert mcp_on(load_settings(data_dir=str(tmp_path), mcp=True, auth_users="ann:pw")) is True


@contextlib.asynccontextmanager
async def _session(url: str, auth: tuple[str, str] | None = None, headers: dict[str, str] | None = None):
    async with httpx.AsyncClient(auth=auth, headers=headers, timeout=60) as http, \
            streamable_http_client(f"{url}/gradio_api/mcp/", http_client=http) as (read, write, _session_id), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


@pytest.mark.slow
async def test_mcp_needs_the_same_logins_and_each_tool_acts_as_its_caller(tmp_path: Path) -> None:
    with FakeComfy(step_time=0.02, node_time=0.01) as fake, \
            running_app(fake.url, tmp_path / "data", STUDIO_MCP="1", AUTH_USERS="ann:pw1,bob:pw2",
                        API_KEYS="k-carol") as url:
        async with httpx.AsyncClient(timeout=30) as http:
            for auth in (None, ("ann", "wrong")):
                refused = await http.post(f"{url}/gradio_api/mcp/", auth=auth, json={
                    "jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={"Accept": "application/json, text/event-stream"})
                assert refused.status_code == 401, refused.text
                assert "Basic" in refused.headers["www-authenticate"]
            assert (await http.get(f"{url}/gradio_api/mcp/sse")).status_code == 401
            # The loopback's own header, guessed from outside, gives no login to the page's API.
            assert (await http.get(f"{url}/config",
                                   headers={"x-studio-mcp-loopback": "guess"})).status_code == 401

        async with _session(url, ("ann", "pw1")) as ann:
            queued = _value(await ann.call_tool("generate", {"prompt": "ann's lighthouse", "steps": 2, "width": 64,
                                                             "height": 64, "seed": 3}))
            [job_id] = queued["job_ids"]
            for _ in range(200):
                mine = _value(await ann.call_tool("jobs", {"state": "", "limit": 5}))
                if mine[0]["state"] == "succeeded":
                    break
                await asyncio.sleep(0.1)
            assert [job["job_id"] for job in mine] == [job_id] and mine[0]["state"] == "succeeded"
            followed = _value(await ann.call_tool("job_status", {"job_id": job_id}))
            assert followed["state"] == "succeeded"

        async with _session(url, ("bob", "pw2")) as bob:
            assert _value(await bob.call_tool("jobs", {"state": "", "limit": 5})) == []
            for tool in ("job_status", "cancel"):
                denied = await bob.call_tool(tool, {"job_id": job_id})
                said = "".join(getattr(part, "text", "") for part in denied.content)
                assert denied.isError and "No job with id" in said, said  # as if it did not exist
        async with _session(url, headers={"Authorization": "Bearer k-carol"}) as carol:
            assert _value(await carol.call_tool("jobs", {"state": "", "limit": 5})) == []

        async with httpx.AsyncClient(timeout=30, auth=("ann", "pw1")) as http:
            listed = (await http.get(f"{url}/api/v1/jobs")).json()
            assert [job["job_id"] for job in listed["jobs"]] == [job_id]  # the REST API's ann owns it too
            assert (await http.get(f"{url}/api/v1/jobs/{job_id}", auth=("bob", "pw2"))).status_code == 404
