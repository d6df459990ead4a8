"""ComfyUI Studio's engine: settings, the job queue and worker, backends, graphs and storage.

Rooms by concept: ``jobs`` (the persistent queue, the worker, job events), ``backends`` (where a job runs:
ComfyUI servers, RunPod Serverless, a pool), ``graph`` (workflows, parameters, object_info, PNG metadata),
``storage`` (local files, S3, the upload backlog, saved workflows). ``service.Studio`` is the facade the
doors call. The doors (``ui/``, ``api/``) and the CLI import from here and from the rooms; the engine
imports neither door, nor any web framework (tests/test_structure.py checks what each room may import).
"""

from comfy.backends.base import Backend, BackendHealth
from comfy.backends.client import ComfyClient, HistoryEntry, RunResult
from comfy.backends.comfyui import ComfyBackend
from comfy.backends.pool import BackendState, Pool
from comfy.backends.runpod import RunPodBackend
from comfy.backends.runpod_client import RequestTooLarge, RunExpired, RunPodClient
from comfy.errors import (
    ComfyError,
    ConfigError,
    ExecutionFailed,
    ExecutionInterrupted,
    IdempotencyConflict,
    JobNotFound,
    JobTimedOut,
    NodeProblem,
    PromptLost,
    PromptRejected,
    ProtocolError,
    QueueError,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
    StorageError,
    WorkflowError,
)
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import GenerationParams, Limits
from comfy.jobs.events import EventBus, JobEvent
from comfy.jobs.queue import JobQueue
from comfy.jobs.records import Job, JobPage, JobState
from comfy.jobs.worker import Worker
from comfy.service import BackendStatus, Models, Studio, redact_url
from comfy.settings import Settings, load_settings
from comfy.storage.local import LocalStore, StoredImage

__all__ = [
    "Backend",
    "BackendHealth",
    "BackendState",
    "BackendStatus",
    "ComfyBackend",
    "ComfyClient",
    "ComfyError",
    "ConfigError",
    "EventBus",
    "ExecutionFailed",
    "ExecutionInterrupted",
    "GenerationParams",
    "HistoryEntry",
    "IdempotencyConflict",
    "Job",
    "JobEvent",
    "JobNotFound",
    "JobTimedOut",
    "JobPage",
    "JobQueue",
    "JobState",
    "Limits",
    "LocalStore",
    "Models",
    "NodeProblem",
    "ObjectInfo",
    "Pool",
    "PromptLost",
    "PromptRejected",
    "ProtocolError",
    "QueueError",
    "RequestTooLarge",
    "RunExpired",
    "RunPodBackend",
    "RunPodClient",
    "RunResult",
    "ServerError",
    "ServerTimeout",
    "ServerUnavailable",
    "Settings",
    "StorageError",
    "StoredImage",
    "Studio",
    "Worker",
    "WorkflowError",
    "load_settings",
    "redact_url",
]
