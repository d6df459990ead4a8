"""Every REST error as one JSON shape, ``{"error": {"code", "message", ...}}``, with the right status.

This is the one place where exceptions become HTTP answers:

    ApiError (ours, raised by routes)          its own status, code and headers
    ComfyError (the engine)                    by class, see ``STATUS_BY_ERROR``; WorkflowError adds ``field``
    RequestValidationError (FastAPI/pydantic)  422 ``validation_error``, naming the field in words
    HTTPException (Starlette: 404, 405...)     its status, a code from the status
    anything else                              500 ``internal_error``, logged, no traceback in the answer

Messages are scrubbed of the configured secrets (API keys, backend headers, UI passwords) before
they leave, in case one ever reaches an exception's text.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from comfy.errors import (
    ComfyError,
    ConfigError,
    IdempotencyConflict,
    JobNotFound,
    PromptRejected,
    QueueError,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
    StorageError,
    WorkflowError,
)

__all__ = [
    "STATUS_BY_ERROR",
    "ApiError",
    "BodyTooLarge",
    "Scrubber",
    "api_field",
    "error_response",
    "install_error_handlers",
    "status_for",
]

logger = logging.getLogger(__name__)

#: Engine error class -> HTTP status; the first class in the MRO that is listed wins.
STATUS_BY_ERROR: dict[type[ComfyError], int] = {
    WorkflowError: 400,
    PromptRejected: 400,
    JobNotFound: 404,
    IdempotencyConflict: 409,
    ServerUnavailable: 503,
    ServerTimeout: 504,
    ServerError: 502,
    StorageError: 503,
    QueueError: 503,
    ConfigError: 500,
}

_CODE_BY_STATUS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "validation_error", 429: "rate_limited", 500: "internal_error", 502: "bad_gateway",
    503: "service_unavailable", 504: "gateway_timeout",
}

#: Engine parameter names that the API spells differently.
_API_FIELD = {"cfg": "cfg_scale", "image": "init_image"}


def api_field(field: str | None) -> str | None:
    """The request field an engine ``WorkflowError.field`` refers to (``cfg`` is ``cfg_scale`` here)."""
    return None if field is None else _API_FIELD.get(field, field)


class ApiError(Exception):
    """Raised by a route to answer with an error: ``status``, a stable ``code`` and a sentence."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}


class BodyTooLarge(HTTPException):
    """Raised while a request body is read once it passes the limit.

    An ``HTTPException`` on purpose: FastAPI turns any other exception raised while it reads a body
    into a 400 "error parsing the body", but lets this one through to our handler.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than the limit of {limit} bytes.")
        self.limit = limit


class Scrubber:
    """Replaces secret values in text with ``***`` (longest first, so no secret is half-replaced)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def status_for(exc: ComfyError) -> int:
    for klass in type(exc).__mro__:
        if klass in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[klass]  # type: ignore[index]
    return 500


def error_response(status: int, code: str, message: str, *, field: str | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _location(loc: Sequence[Any]) -> str:
    """``("body", 0, "steps")`` -> ``[0].steps``; ``("query", "limit")`` -> ``limit``."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header", "cookie") else list(loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or (str(loc[0]) if loc else "body")


def _readable(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "is invalid"))
    if error.get("type") == "json_invalid":
        return f"The request body is not valid JSON ({error.get('ctx', {}).get('error', 'syntax error')})."
    if error.get("type") == "missing":
        return f"{_location(error.get('loc', ()))} is required."
    return f"{_location(error.get('loc', ()))}: {message[0].lower() + message[1:] if message else message}."


def install_error_handlers(app: FastAPI, scrub: Scrubber) -> None:
    """Register the handlers above on ``app``."""

    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, scrub(exc.message), field=exc.field, headers=exc.headers,
                              **exc.extra)

    async def on_comfy_error(request: Request, exc: ComfyError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            logger.warning("%s %s -> %d %s: %s", request.method, request.url.path, status, exc.code,
                           scrub(str(exc)))
        field = api_field(exc.field) if isinstance(exc, WorkflowError) else None
        headers = {"Retry-After": "10"} if status == 503 else None
        job_id = getattr(exc, "job_id", None) if isinstance(exc, IdempotencyConflict) else None
        return error_response(status, exc.code, scrub(str(exc)), field=field, headers=headers, job_id=job_id)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        details = [{"field": _location(e.get("loc", ())), "message": _readable(e)} for e in errors[:20]]
        first = details[0] if details else {"field": "body", "message": "The request is invalid."}
        message = first["message"] if len(details) <= 1 else f"{first['message']} (and {len(errors) - 1} more)"
        return error_response(422, "validation_error", scrub(message), field=first["field"], details=details)

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "payload_too_large" if isinstance(exc, BodyTooLarge) else _CODE_BY_STATUS.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404 and (detail is None or detail == "Not Found"):
            detail = f"Nothing at {request.url.path}; see /docs for the API's routes."
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
        return error_response(exc.status_code, code, scrub(detail or "Request refused."),
                              headers=dict(exc.headers or {}) or None)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        trace = "".join(traceback.format_exception(exc))
        logger.error("Unhandled error on %s %s:\n%s", request.method, request.url.path, scrub(trace))
        return error_response(500, "internal_error", "Something went wrong on our side; it was logged.")

    app.add_exception_handler(ApiError, on_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(ComfyError, on_comfy_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_unexpected)
