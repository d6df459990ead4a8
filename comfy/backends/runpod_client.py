"""The HTTP client of RunPod Serverless's API (``/run``, ``/status``, ``/cancel``, ``/health``), with bounded retries.

Retries what is safe to retry (reads, and a ``/run`` refused before RunPod took it, such as a 429 with
``Retry-After``); :func:`map_errors` is the one place httpx errors become the studio's. See
``tests/fixtures/runpod`` for the request and response shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
from pydantic import SecretStr

from comfy.backends.base import redact_url
from comfy.errors import (
    PromptRejected,
    ProtocolError,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
    describe_transport_failure,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BASE_URL", "RequestTooLarge", "RunExpired", "RunPodClient", "RunUnconfirmed", "map_errors"]


DEFAULT_BASE_URL = "https://api.runpod.ai/v2"


class RunExpired(ServerError):
    """Raised when RunPod answers 404 for a job it had: it expired (ttl, or 30 min after it ended).

    Retryable like :class:`PromptLost`: the job is submitted again while it has attempts left.
    """

    retryable = True
    code = "run_expired"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"RunPod no longer knows job {job_id}: it expired before its result was collected "
                         "(RunPod keeps results 30 minutes, and deletes jobs older than STUDIO_RUNPOD_TTL).")
        self.job_id = job_id


class RunUnconfirmed(ServerError):
    """Raised when ``/run`` may have been queued at RunPod although its answer says otherwise or never came
    (a gateway's 500/502/504, a timeout, a connection cut after the request went out).

    Not retryable, by type: RunPod has no way to look a run up without its id, so sending the job again
    could pay for two runs. The job fails with a sentence that says so.
    """

    code = "run_unconfirmed"

    def __init__(self, what: str) -> None:
        super().__init__(f"RunPod {what} when this job was submitted, so it may be queued and run at RunPod all "
                         "the same; it was not sent again, so that it is never paid for twice. Look for it among "
                         "the endpoint's requests in the RunPod console, and submit it again if it is not there.")


class RequestTooLarge(PromptRejected):
    """Raised when RunPod refuses ``/run`` because the request is larger than its 10 MB limit."""

    code = "request_too_large"


@contextlib.contextmanager
def map_errors(what: str) -> Iterator[None]:
    """Turn httpx exceptions into :class:`ServerError` subclasses (the one mapping point for RunPod)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ServerTimeout(f"RunPod did not answer in time ({what}).") from exc
    except httpx.TransportError as exc:
        raise ServerUnavailable(f"Cannot reach RunPod ({what}): {describe_transport_failure(exc)}.") from exc
    except httpx.HTTPError as exc:  # invalid URLs, decoding errors, stream misuse
        raise ServerError(f"Talking to RunPod failed ({what}): {type(exc).__name__}.") from exc


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class RunPodClient:
    """The serverless queue API of one endpoint. Retries 429/5xx (and refused connections) with backoff.

    >>> RunPodClient("abc123", SecretStr("rp_secret")).url("/run")
    'https://api.runpod.ai/v2/abc123/run'
    """

    def __init__(
        self,
        endpoint_id: str,
        api_key: SecretStr | str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        http: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.base_url = base_url.rstrip("/")
        self._key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout or httpx.Timeout(60.0, connect=10.0),
                                              follow_redirects=True)
        self.retries = retries
        self.backoff = backoff
        #: The longest wait between two tries, whatever ``Retry-After`` asks.
        self.max_wait = max_wait
        self.sleep = sleep

    def __repr__(self) -> str:
        return f"RunPodClient(endpoint_id={self.endpoint_id!r}, base_url={redact_url(self.base_url)!r})"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{self.endpoint_id}{path}"

    async def aclose(self) -> None:
        if self._owns_http and not self.http.is_closed:
            await self.http.aclose()

    async def run(self, body: bytes) -> dict[str, Any]:
        """``POST /run`` with a prepared JSON body; returns ``{"id", "status"}``.

        Raises :class:`RequestTooLarge` (413), :class:`PromptRejected` (other 4xx), :class:`ServerUnavailable`.
        """
        response = await self._request("POST", "/run", "submitting a job", content=body, idempotent=False)
        if response.status_code == 413 or (response.status_code == 400 and b"too large" in response.content.lower()):
            raise RequestTooLarge(
                f"RunPod refused the job: the request is {len(body) / 1e6:.1f} MB, more than the 10 MB that /run "
                "accepts.",
                body=_json_or_text(response),
            )
        if 400 <= response.status_code < 500:
            raise PromptRejected(f"RunPod refused the job with HTTP {response.status_code}: "
                                 f"{short(_json_or_text(response))}", body=_json_or_text(response))
        # Any other answer came after the request reached RunPod: one we cannot read (a proxy's page, a cut
        # body, an unknown shape) may still have queued the job, so it is unconfirmed, never retried.
        try:
            answer = self._json(response, "submitting a job")
        except ServerError:  # not 200, or not a JSON object
            raise RunUnconfirmed(f"answered HTTP {response.status_code} with no job id we could read") from None
        if not isinstance(answer.get("id"), str) or not answer["id"]:
            raise RunUnconfirmed(f"answered HTTP {response.status_code} without a job id ({short(answer)})")
        return answer

    async def status(self, job_id: str) -> dict[str, Any]:
        """``GET /status/{id}``; raises :class:`RunExpired` on 404."""
        response = await self._request("GET", f"/status/{job_id}", f"status of job {job_id}")
        if response.status_code == 404:
            raise RunExpired(job_id)
        return self._json(response, f"status of job {job_id}")

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """``POST /cancel/{id}``; a job RunPod no longer knows counts as cancelled."""
        response = await self._request("POST", f"/cancel/{job_id}", f"cancelling job {job_id}")
        if response.status_code == 404:
            return {"id": job_id, "status": "CANCELLED"}
        return self._json(response, f"cancelling job {job_id}")

    async def health(self) -> dict[str, Any]:
        """``GET /health``: ``{"jobs": {...}, "workers": {"idle", "running"}}``."""
        return self._json(await self._request("GET", "/health", "health"), "health")

    async def download(self, url: str) -> bytes:
        """Stream a presigned S3 URL (sent without our API key: it is someone else's server)."""
        what = f"downloading {redact_url(url)}"
        for attempt in range(self.retries + 1):
            with map_errors(what):
                async with self.http.stream("GET", url) as response:
                    if response.status_code == 200:
                        return b"".join([chunk async for chunk in response.aiter_bytes()])
                    if response.status_code < 500 or attempt == self.retries:
                        raise ServerError(f"The bucket answered HTTP {response.status_code} to {what} "
                                          "(an expired or wrong presigned URL?).")
            await self.sleep(self._wait(attempt, None))
        raise AssertionError("unreachable")

    # -- one request, retried -----------------------------------------------------------------------

    async def _request(self, method: str, path: str, what: str, *, content: bytes | None = None,
                       idempotent: bool = True) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._key.get_secret_value()}"}  # at the point of use only
        if content is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(self.retries + 1):
            try:
                with map_errors(what):
                    response = await self.http.request(method, self.url(path), content=content, headers=headers)
            except (ServerUnavailable, ServerTimeout) as exc:
                # A refused connection sent nothing; anything else may have reached RunPod: retry only reads.
                unsent = isinstance(exc.__cause__, (httpx.ConnectError, httpx.ConnectTimeout))
                if not idempotent and not unsent:
                    raise RunUnconfirmed(f"did not answer ({describe_transport_failure(exc.__cause__ or exc)})") \
                        from exc
                if attempt == self.retries or not (idempotent or unsent):
                    raise
                wait = self._wait(attempt, None)
                logger.info("RunPod: %s failed (%s); retrying in %.2fs", what, exc, wait)
            else:
                if response.status_code in (401, 403):
                    raise ServerUnavailable(f"RunPod refused the API key (HTTP {response.status_code}) for {what}; "
                                            "check RUNPOD_API_KEY and RUNPOD_ENDPOINT_ID.")
                if response.status_code == 404 and not path.startswith("/status/") and not path.startswith("/cancel/"):
                    raise ServerUnavailable(f"RunPod has no endpoint {self.endpoint_id} (HTTP 404 for {what}); "
                                            "check RUNPOD_ENDPOINT_ID and RUNPOD_BASE_URL.")
                if response.status_code != 429 and response.status_code < 500:
                    return response
                # A 500/502/504 to /run may come after RunPod queued the job: sending it again could
                # start a second run we never learn of. 429 and 503 say it was not taken.
                unsure = not idempotent and response.status_code not in (429, 503)
                if unsure:
                    raise RunUnconfirmed(f"answered HTTP {response.status_code}")
                if attempt == self.retries:
                    kind = "rate-limited" if response.status_code == 429 else f"answered HTTP {response.status_code} to"
                    raise ServerUnavailable(f"RunPod {kind} {what} {attempt + 1} times in a row.",
                                            status=response.status_code)
                wait = self._wait(attempt, _retry_after(response))
                logger.info("RunPod answered HTTP %d to %s; retrying in %.2fs", response.status_code, what, wait)
            await self.sleep(wait)
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return min(self.backoff * 2**attempt, self.max_wait)

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise ServerError(f"RunPod answered HTTP {response.status_code} to {what}: "
                              f"{short(_json_or_text(response))}")
        try:
            body = response.json()
        except ValueError as exc:
            raise ProtocolError(f"RunPod's answer to {what} is not JSON.") from exc
        if not isinstance(body, dict):
            raise ProtocolError(f"RunPod's answer to {what} is not a JSON object.")
        return body


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"
