"""ComfyUI Studio: the studio page at / and the REST API beside it, in one process.

    python app.py                      # http://127.0.0.1:7860
    python app.py --share              # plus a public Gradio link (needs AUTH_USERS)

Settings come from the environment and .env (see the README); this file only wires things together.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI
from starlette.routing import Mount

from api.app import create_api
from api.guard import BodyLimitMiddleware
from api.mcp_logins import McpLogins
from comfy import ConfigError, Settings, Studio, load_settings, redact_url
from comfy.auth import PasswordChecker
from comfy.storage.sharing import inputs_sharing, outputs_sharing
from ui import CSS, HEAD, build_ui, outputs_paths
from ui.files import OwnedFiles, PageCopies, page_user
from ui.logins import PageLogins, page_auth

logger = logging.getLogger("comfyui_studio")

ON_SPACES = bool(os.environ.get("SPACE_ID"))


def browser_secret(settings: Settings) -> str:
    """A secret kept in the data folder, so form values saved in browsers stay readable after restarts."""
    path = Path(settings.data_dir) / "browser_state.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def create_app(settings: Settings, *, studio: Studio | None = None,
               passwords: PasswordChecker | None = None) -> FastAPI:
    """The FastAPI app: REST API routes, with the Gradio page mounted at /.

    One :class:`PasswordChecker` serves both doors: the page's login form and HTTP Basic on the REST API,
    so a user is the same owner of the same jobs on both, and a login's attempts are counted across both.
    With logins or API keys, the page sees only its owner's jobs (with keys but no logins, those nobody
    owns: the page's own), and its files (saved images, and its copies of them) only those.
    """
    studio = studio or Studio(settings)
    users, keys = settings.users(), settings.keys()
    if users and passwords is None:
        passwords = PasswordChecker(users, attempts_per_minute=settings.rate_limit_per_minute)
    api = create_api(studio, settings, passwords=passwords)
    secret = browser_secret(settings)
    copies = PageCopies(gr.utils.get_upload_folder(), secret) if users or keys else None
    if copies is not None:
        studio.copies.append(copies)  # retention removes a job's page copies with it
    blocks = build_ui(studio, settings, auth_on=bool(users), browser_secret=secret, copies=copies)
    blocks.queue(default_concurrency_limit=8)
    mcp = mcp_on(settings)
    # Gradio awaits an async auth function: the password hash runs in the checker's threads, off the loop.
    app = gr.mount_gradio_app(
        api, blocks, path="/", auth=page_auth(passwords) if passwords else None,
        auth_message="Log in to ComfyUI Studio." if users else None,
        allowed_paths=outputs_paths(settings), css=CSS, head=HEAD, footer_links=["api", "gradio", "settings"],
        server_name=settings.server_name, server_port=settings.server_port,
        max_file_size=settings.max_upload_bytes,  # an upload past STUDIO_MAX_UPLOAD_BYTES is refused at the door
        mcp_server=mcp,
    )
    # The page's JSON calls carry images as base64 (a third larger than the file); its file uploads have
    # max_file_size. Without this, a body of any size would be read whole before anything refuses it.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes * 4 // 3 + 1024 * 1024,
                       prefix="/gradio_api/", exempt=("/gradio_api/upload",))
    page = next(route.app for route in app.routes if isinstance(route, Mount) and route.app is not api)
    if users or keys:
        app.add_middleware(OwnedFiles, studio=studio, user_of=page_user(page), logins=bool(users), copies=copies)
    if mcp:
        app.add_middleware(McpLogins, guard=api.state.guard, page=page, local_url=_local_url(settings))
    if users:
        app.add_middleware(PageLogins)  # the login form's attempts are limited like HTTP Basic's
    return app


def mcp_on(settings: Settings) -> bool:
    """Whether to serve the MCP tools (behind the REST API's logins and keys: see :mod:`api.mcp_logins`)."""
    if not settings.mcp:
        return False
    try:
        import mcp  # noqa: F401 - Gradio's MCP server needs it
    except ImportError:
        raise ConfigError("STUDIO_MCP=1 (--mcp) needs the mcp package: pip install -r requirements.txt.") from None
    return True


def _local_url(settings: Settings) -> str:
    """Where this process answers itself (Gradio's MCP server calls the page's API there)."""
    host = settings.server_name
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host
    return f"http://{host}:{settings.server_port}"


def protection(settings: Settings) -> str:
    """What the start-up line says is guarded, and by what (no secrets: counts, not names)."""
    users, keys = settings.users(), settings.keys()
    if not users and not keys:
        doors = "the page, the REST API and the MCP tools are" if settings.mcp else "the page and the REST API are"
        return f"no logins and no API keys: {doors} open to anyone who can reach this address"
    limit = settings.rate_limit_per_minute
    attempts = f"{limit} login attempts a minute per address and per user" if limit else "login attempts unlimited"
    page = (f"the page needs a login ({len(users)} user(s) in AUTH_USERS; each sees only their own jobs and "
            f"images; {attempts})" if users
            else "the page is OPEN (no AUTH_USERS): anyone who reaches it can use the GPU, and sees and cancels "
                 "the jobs made on the page (not the API keys' jobs or images)")
    ways = ([f"{len(keys)} API key(s) as Bearer"] if keys else []) + (["the same logins as HTTP Basic"] if users else [])
    doors = "the REST API and the MCP tools (/gradio_api/mcp/) need" if settings.mcp else "the REST API needs"
    return (f"{page}; {doors} {' or '.join(ways)}, each seeing only its own jobs; "
            "open: /healthz, /readyz, /health, /metrics, /docs (no prompts, no user data)")


def check_sharing(settings: Settings) -> None:
    """Refuse a public link that would let anyone on the internet use the GPU, unless told to."""
    if not settings.share:
        return
    if ON_SPACES:
        raise ConfigError("SHARE is not available on Hugging Face Spaces: the Space already has a public URL.")
    if not settings.users() and not settings.allow_share_without_auth:
        raise ConfigError(
            "A share link makes the studio public. Set AUTH_USERS (user:password pairs) first, or set "
            "STUDIO_ALLOW_SHARE_WITHOUT_AUTH=1 if you really want a link anyone can use."
        )


def _open_share_link(server: uvicorn.Server, host: str, port: int, who: str) -> None:
    from gradio import networking

    while not server.started:
        time.sleep(0.1)
    try:
        url = networking.setup_tunnel(host if host != "0.0.0.0" else "127.0.0.1", port,
                                      secrets.token_urlsafe(32), None, None)
    except Exception as exc:  # noqa: BLE001 - the local studio keeps running without the link
        logger.error("Could not create a share link (%s); the studio is still on http://%s:%s", exc, host, port)
        return
    print(f"Public URL: {url}  (valid for up to a week; {who})", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ComfyUI Studio")
    parser.add_argument("--share", action="store_true", help="make a public Gradio link (same as SHARE=1)")
    parser.add_argument("--host", help="address to listen on (GRADIO_SERVER_NAME, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (GRADIO_SERVER_PORT, default 7860)")
    parser.add_argument("--demo", action="store_true",
                        help="run on the built-in demo backend, no ComfyUI or GPU needed (same as STUDIO_DEMO=1)")
    parser.add_argument("--mcp", action="store_true",
                        help="serve the named endpoints as MCP tools at /gradio_api/mcp/ (same as STUDIO_MCP=1)")
    return parser.parse_args(argv)


def overrides_from(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, object]:
    """Settings the command line (and the host: a Space) sets over the environment."""
    on_spaces = bool(environ.get("SPACE_ID"))
    overrides: dict[str, object] = {}
    if args.share:
        overrides["share"] = True
    if args.host:
        overrides["server_name"] = args.host
    if args.port:
        overrides["server_port"] = args.port
    if args.demo:
        overrides["demo"] = True
    if args.mcp:
        overrides["mcp"] = True
    if on_spaces and not any(environ.get(name) for name in ("COMFYUI_URL", "RUNPOD_ENDPOINT_ID", "STUDIO_DEMO")):
        overrides["demo"] = True  # a Space nobody has connected yet: show the demo, and how to connect
    if on_spaces and not args.host and "GRADIO_SERVER_NAME" not in environ:
        overrides["server_name"] = "0.0.0.0"  # a Space reaches the app through its own proxy
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    overrides = overrides_from(args, os.environ)
    try:
        settings = load_settings(**overrides)
        check_sharing(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings)  # refuses, with a sentence, a queue folder on a network filesystem
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = uvicorn.Server(uvicorn.Config(app, host=settings.server_name, port=settings.server_port,
                                           log_level="warning", ws="wsproto", timeout_graceful_shutdown=5))
    if settings.share:
        who = ("everyone needs an AUTH_USERS login" if settings.users()
               else "NO logins: anyone with the link can use the studio")
        threading.Thread(target=_open_share_link, args=(server, settings.server_name, settings.server_port, who),
                         daemon=True).start()
    backend = "the demo backend, no ComfyUI needed" if settings.demo else redact_url(settings.comfyui_urls[0])
    print(f"ComfyUI Studio on http://{settings.server_name}:{settings.server_port}  "
          f"(backend {backend}; REST API docs at /docs)", flush=True)
    print(f"Protected: {protection(settings)}", flush=True)
    print(f"Data folder: {settings.data_dir} (queue, kept inputs; images in {settings.outputs_dir})", flush=True)
    if settings.redis_url is not None:
        role = "page, API and a worker" if settings.run_worker else "page and API, no worker (STUDIO_WORKER=0)"
        print(f"Queue: Redis {settings.redis_url_redacted} (prefix {settings.redis_prefix}), shared with every "
              f"replica and worker on it; this replica runs the {role}", flush=True)
        fine, sentence = outputs_sharing(settings)
        print(sentence if fine else f"Warning: {sentence}", flush=True)
        if (inputs := inputs_sharing(settings)) is not None:
            print(f"Warning: {inputs}", flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
