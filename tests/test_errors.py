"""The error tree: every foreign exception maps to one of ours, and retryability is part of the type."""

from __future__ import annotations

import inspect

import httpx
import httpx_ws
import pytest

import comfy.errors as errors
from comfy.backends.transport import map_errors


def _subclasses(base: type) -> list[type]:
    found, todo = [], [base]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith(("httpx", "httpx_ws")):
                found.append(sub)
                todo.append(sub)
    return found


def _instance(cls: type) -> BaseException:
    request = httpx.Request("GET", "http://127.0.0.1:8188/prompt")
    response = httpx.Response(403, request=request)
    if issubclass(cls, httpx.HTTPStatusError):
        return cls("nope", request=request, response=response)
    if issubclass(cls, httpx_ws.WebSocketUpgradeError):
        return cls(response)
    if issubclass(cls, httpx_ws.WebSocketInvalidTypeReceived):
        return cls(None)
    params = inspect.signature(cls.__init__).parameters
    if "request" in params:
        return cls("boom", request=request)
    return cls("boom") if len(params) > 1 else cls()


FOREIGN = _subclasses(httpx.HTTPError) + [httpx.HTTPError] + _subclasses(httpx_ws.HTTPXWSException) + [
    httpx_ws.HTTPXWSException]


@pytest.mark.parametrize("cls", FOREIGN, ids=lambda c: c.__name__)
def test_every_httpx_and_httpx_ws_error_maps_to_a_server_error(cls: type) -> None:
    with pytest.raises(errors.ServerError) as info:
        with map_errors("a test"):
            raise _instance(cls)
    assert isinstance(info.value.__cause__, cls)
    assert str(info.value)  # a sentence, never empty


def test_transport_and_timeouts_are_retryable_but_rejections_are_not() -> None:
    with pytest.raises(errors.ServerUnavailable):
        with map_errors("x"):
            raise httpx.ConnectError("refused")
    with pytest.raises(errors.ServerTimeout):
        with map_errors("x"):
            raise httpx.ReadTimeout("slow")
    assert errors.ServerUnavailable.retryable and errors.ServerTimeout.retryable and errors.PromptLost.retryable
    assert not errors.PromptRejected.retryable and not errors.ExecutionFailed.retryable
    assert not errors.WorkflowError.retryable


def test_tree_is_drawn_in_the_docstring_and_exported() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.ComfyError):
            assert name in errors.__doc__, name
            assert cls.__doc__, name


def test_proxy_refusal_hints_at_headers() -> None:
    request = httpx.Request("GET", "http://x/ws")
    with pytest.raises(errors.ServerUnavailable, match="COMFYUI_HEADERS"):
        with map_errors("x"):
            raise httpx_ws.WebSocketUpgradeError(httpx.Response(401, request=request))
