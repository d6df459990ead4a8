"""Backends from the settings: each COMFYUI_URL's client, the RunPod endpoint, or the demo alone.

The studio builds its pool from :func:`pool_backends`; the client of the first ComfyUI server is made apart
(:func:`comfy_client`) because the studio also asks it for the node catalogue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from comfy.backends.base import Backend
from comfy.backends.client import ComfyClient
from comfy.backends.comfyui import ComfyBackend

if TYPE_CHECKING:
    from comfy.settings import Settings

__all__ = ["comfy_client", "pool_backends"]


def _timeout(settings: Settings) -> httpx.Timeout:
    return httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)


def comfy_client(settings: Settings, url: str) -> ComfyClient:
    return ComfyClient(url, headers=settings.backend_headers(), timeout=_timeout(settings),
                       ping_interval=settings.ws_ping_interval)


def pool_backends(settings: Settings, first: ComfyClient) -> list[Backend]:
    """Each COMFYUI_URL (the first through ``first``), then the RunPod endpoint if one is set (or the demo alone).

    Only the endpoint when RUNPOD_ENDPOINT_ID is set and COMFYUI_URL is not (its default would be a
    server that is not there).
    """
    if settings.demo:  # the demo backend alone: nothing to reach, pictures drawn here
        from comfy.backends.demo import DemoBackend

        return [DemoBackend()]
    urls = list(dict.fromkeys(settings.comfyui_urls))
    if settings.runpod_endpoint_id and "comfyui_url" not in settings.model_fields_set:
        urls = []
    several = len(urls) + (1 if settings.runpod_endpoint_id else 0) > 1
    backends: list[Backend] = []
    for index, url in enumerate(urls):
        client = first if index == 0 else comfy_client(settings, url)
        if several:  # another backend can take its jobs: give a silent one less time to come back
            client.reconnect_window = settings.failover_seconds
        backends.append(ComfyBackend(client, max_in_flight=settings.max_in_flight))
    if settings.runpod_endpoint_id:
        from comfy.backends.runpod import RunPodBackend
        from comfy.backends.runpod_client import RunPodClient

        assert settings.runpod_api_key is not None  # the settings refuse an endpoint without a key
        api = RunPodClient(settings.runpod_endpoint_id, settings.runpod_api_key, base_url=settings.runpod_base_url,
                           timeout=_timeout(settings))
        backends.append(RunPodBackend(
            api, max_in_flight=settings.runpod_max_in_flight, checkpoints=settings.runpod_checkpoint_list,
            ttl=settings.runpod_ttl, reconnect_window=settings.failover_seconds if several else 120.0,
        ))
    return backends
