"""Every error ComfyUI Studio raises, in one tree.

    ComfyError                      base: the only thing a caller (UI, REST, CLI) needs to catch
    ├── ConfigError                 a setting is invalid (raised once, at start-up)
    ├── WorkflowError               a workflow or a parameter is wrong; .field names what to fix
    ├── ServerError                 anything talking to a ComfyUI server
    │   ├── ServerUnavailable       connection refused, DNS, reset, 5xx          [retryable]
    │   ├── ServerTimeout           a request or a run took too long             [retryable]
    │   │   └── JobTimedOut         the job ran past STUDIO_JOB_TIMEOUT and was stopped  [not retryable]
    │   ├── PromptRejected          400 from /prompt; .problems are sentences    [not retryable]
    │   │   └── RequestTooLarge     RunPod refused a body over 10 MB; in comfy.backends.runpod_client
    │   ├── ExecutionFailed         execution_error; .node_id, .node_type, ...   [not retryable]
    │   ├── ExecutionInterrupted    execution_interrupted (a cancel or someone else's interrupt)
    │   ├── PromptLost              the server no longer knows a prompt (it restarted)  [retryable]
    │   ├── PromptUnconfirmed       POST /prompt's answer was lost or garbled and the prompt did not show up [retryable]
    │   ├── RunExpired              RunPod Serverless forgot the run (404); in comfy.backends.runpod_client  [retryable]
    │   ├── RunUnconfirmed          /run answered 5xx or not at all: it may run at RunPod; in comfy.backends.runpod_client
    │   └── ProtocolError           a frame or body we did not expect            [retryable]
    ├── QueueError                  the job queue refused an operation
    │   ├── QueueUnavailable        the queue's Redis cannot be reached (a restart, a blip)  [retryable]
    │   ├── JobNotFound             no job with that id
    │   │   └── GridNotFound        no X/Y/Z plot with that id
    │   └── IdempotencyConflict     the same idempotency key came with a different request
    └── StorageError                an output could not be written or read        [retryable]

Whether an error is worth retrying is part of its type (``retryable``): the worker reads it, so a
rejected prompt is never sent three times while a dropped connection is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "ComfyError",
    "ConfigError",
    "WorkflowError",
    "ServerError",
    "ServerUnavailable",
    "ServerTimeout",
    "JobTimedOut",
    "PromptRejected",
    "ExecutionFailed",
    "ExecutionInterrupted",
    "PromptLost",
    "PromptUnconfirmed",
    "ProtocolError",
    "QueueError",
    "QueueUnavailable",
    "JobNotFound",
    "GridNotFound",
    "IdempotencyConflict",
    "StorageError",
    "NodeProblem",
    "describe_transport_failure",
]


class ComfyError(Exception):
    """Base of every error raised by ComfyUI Studio; its message is meant for a person."""

    retryable: ClassVar[bool] = False
    #: A short, stable name for APIs and metrics (``prompt_rejected``, ``server_unavailable``...).
    code: ClassVar[str] = "error"


class ConfigError(ComfyError):
    """Raised at start-up when a setting is invalid; the message names the variable."""

    code = "config_error"


class WorkflowError(ComfyError):
    """Raised when a workflow or a generation parameter is wrong, before any job is created."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        #: The parameter or workflow input to fix (``steps``, ``node 3 (KSampler).cfg``), if known.
        self.field = field


class ServerError(ComfyError):
    """Raised for anything that went wrong talking to a ComfyUI server."""

    code = "server_error"


class ServerUnavailable(ServerError):
    """Raised when the server cannot be reached or answers with a 5xx.

    ``status`` is the HTTP status when it did answer: a server that answers 500 to one request is up,
    and may answer so to that request every time.
    """

    retryable = True
    code = "server_unavailable"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerTimeout(ServerError):
    """Raised when a request, or a whole run, took longer than its limit."""

    retryable = True
    code = "server_timeout"


@dataclass(frozen=True)
class NodeProblem:
    """One validation problem ComfyUI reported, in words a person can act on."""

    node_id: str | None
    node_type: str | None
    input_name: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


class JobTimedOut(ServerTimeout):
    """Raised when a job ran longer than its limit; it was stopped on the server and is not retried."""

    retryable = False
    code = "job_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The job ran longer than its limit of {seconds:.0f} s and was stopped "
                         "(raise STUDIO_JOB_TIMEOUT for longer jobs).")
        self.seconds = seconds


class PromptRejected(ServerError):
    """Raised when ComfyUI refuses a prompt with HTTP 400 (validation failed)."""

    code = "prompt_rejected"

    def __init__(self, message: str, *, problems: tuple[NodeProblem, ...] = (), body: object = None) -> None:
        super().__init__(message)
        self.problems = problems
        #: ComfyUI's answer as it came, for logs and API clients that want the details.
        self.body = body


class ExecutionFailed(ServerError):
    """Raised when a node failed while ComfyUI ran the prompt (an ``execution_error``)."""

    code = "execution_failed"

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        node_type: str | None = None,
        exception_type: str | None = None,
        exception_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message


class ExecutionInterrupted(ServerError):
    """Raised when the run was interrupted on the server (by a cancel or another client)."""

    code = "interrupted"

    def __init__(self, message: str = "The run was interrupted on the ComfyUI server.", *, node_id: str | None = None,
                 node_type: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type


class PromptLost(ServerError):
    """Raised when the server has neither queued, running nor finished a prompt we sent (it restarted)."""

    retryable = True
    code = "prompt_lost"

    def __init__(self, prompt_id: str) -> None:
        super().__init__(
            f"The ComfyUI server no longer knows prompt {prompt_id} (it was probably restarted); "
            "the job will be submitted again."
        )
        self.prompt_id = prompt_id


class PromptUnconfirmed(ServerError):
    """Raised when the answer to ``POST /prompt`` was lost or unreadable (a timeout, a reset, a proxy's 502 or
    504 page) and the prompt did not appear in the server's queue or history while we looked.

    It may still arrive (ComfyUI validates before it queues, and finishes a request whose client left), so the
    job is sent again under a new id and :attr:`prompt_id` is to be stopped should it ever appear.
    """

    retryable = True
    code = "prompt_unconfirmed"

    def __init__(self, prompt_id: str, reason: str, looked_for: float) -> None:
        super().__init__(
            f"The answer to submitting prompt {prompt_id} was lost ({reason}) and ComfyUI did not show it in its "
            f"queue or history for {looked_for:.0f} s; it is sent again, and stopped if it ever shows up."
        )
        self.prompt_id = prompt_id


class ProtocolError(ServerError):
    """Raised when the server sent something this client does not understand."""

    retryable = True
    code = "protocol_error"


class QueueError(ComfyError):
    """Raised when the job queue refuses an operation."""

    code = "queue_error"


class QueueUnavailable(QueueError):
    """Raised when the job queue's Redis cannot be reached; the same call may work once it is back."""

    code = "queue_unavailable"
    retryable = True


class JobNotFound(QueueError):
    """Raised when no job has the given id."""

    code = "not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No job with id {job_id!r}.")
        self.job_id = job_id


class GridNotFound(JobNotFound):
    """Raised when no X/Y/Z plot has the given id (or the caller may not see it)."""

    def __init__(self, grid_id: str) -> None:
        QueueError.__init__(self, f"No grid with id {grid_id!r}.")
        self.job_id = self.grid_id = grid_id


class IdempotencyConflict(QueueError):
    """Raised when an idempotency key is reused with a different request."""

    code = "idempotency_conflict"

    def __init__(self, key: str, job_id: str, *, kind: str = "job") -> None:
        super().__init__(
            f"The idempotency key {key!r} was already used for {kind} {job_id} with different parameters; "
            "use a new key for a new request."
        )
        self.key = key
        self.job_id = job_id


class StorageError(ComfyError):
    """Raised when an output cannot be written or read."""

    retryable = True
    code = "storage_error"


_TRANSPORT_FAILURES = {
    "ConnectError": "connection refused, or the host was not found",
    "ConnectTimeout": "no answer to the connection attempt",
    "ReadError": "the connection broke",
    "WriteError": "the connection broke",
    "RemoteProtocolError": "the server closed the connection unexpectedly",
    "ProxyError": "the proxy refused the connection",
}


def describe_transport_failure(exc: BaseException) -> str:
    """A network failure (an httpx exception) in words a person reads, e.g. "connection refused..."."""
    name = type(exc).__name__
    return _TRANSPORT_FAILURES.get(name, name)
