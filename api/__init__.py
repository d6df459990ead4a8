"""ComfyUI Studio's REST API: a FastAPI door over the engine, beside the Gradio page (``ui/``).

``app`` builds the application and its health, models and metrics routes; ``jobs`` and ``stream`` are the
job routes and their live events (SSE, WebSocket); ``guard`` checks keys, logins, rate limits (with
:mod:`comfy.ratelimit`) and body sizes; ``models`` are the request and answer shapes; ``errors`` turns every
failure into one JSON shape.
May import ``comfy`` (the engine) and FastAPI/Starlette; the engine never imports this package.
"""
