"""Backends: where a job's graph runs.

``base`` draws the Backend interface the worker drives; ``client``, ``protocol`` and ``progress`` speak
ComfyUI's HTTP + WebSocket protocol to one server; ``comfyui`` is the backend over that client;
``runpod*`` is RunPod Serverless; ``demo`` draws placeholder pictures with no GPU; ``pool`` spreads jobs over several backends with failover.
May import ``comfy.errors``, ``comfy.graph``, ``comfy.storage.local`` and the job records of ``comfy.jobs``,
never the worker, the service or a door.
"""
