"""``python -m comfy``: generate, list and cancel jobs, or run a worker, from a terminal.

    python -m comfy generate "a lighthouse at dawn" --steps 20 --seed 42
    python -m comfy jobs --state running
    python -m comfy cancel 3f2a9c0d1e4b5a69
    python -m comfy worker

``generate`` runs a worker in its own process, so it works alone; a ``python -m comfy worker``
started elsewhere on the same data folder shares the queue safely (claims are atomic).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from comfy.errors import ComfyError, ConfigError, WorkflowError
from comfy.graph.params import GenerationParams
from comfy.jobs.records import Job, JobState
from comfy.service import Studio
from comfy.settings import DEFAULT_DATA_DIR, load_settings
from comfy.storage.sharing import outputs_sharing

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

ENVIRONMENT = f"""\
environment (or a .env file):
  COMFYUI_URL        where ComfyUI answers (default http://127.0.0.1:8188); several, comma-separated, make a pool
  STUDIO_DATA_DIR    the queue, outputs and kept inputs (default {DEFAULT_DATA_DIR}, whatever folder you run in)
  RUNPOD_ENDPOINT_ID, RUNPOD_API_KEY   a RunPod Serverless endpoint instead of (or beside) COMFYUI_URL
  STUDIO_RETENTION_DAYS                finished jobs older than this are removed (0 = keep for ever)
  REDIS_URL, REDIS_PREFIX              share one queue with replicas and workers on other machines
every setting is listed in the README's configuration table."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m comfy", description="ComfyUI Studio from the command line.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=ENVIRONMENT)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="queue images and wait for them")
    gen.add_argument("prompt", help="what the image should show")
    gen.add_argument("--negative", default=None, help="what it should not show")
    gen.add_argument("--checkpoint", help="model file (default: the first the server lists)")
    gen.add_argument("--sampler", help="e.g. euler, dpmpp_2m (default euler)")
    gen.add_argument("--scheduler", help="e.g. normal, karras (default normal)")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--cfg", type=float)
    gen.add_argument("--seed", type=int, help="-1 for random (default)")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--batch-size", type=int, dest="batch_size")
    gen.add_argument("--denoise", type=float, help="img2img strength, 0..1 (with --image)")
    gen.add_argument("--image", type=Path, help="init image for img2img")
    gen.add_argument("--workflow", type=Path, help="an API-format workflow JSON (or a ComfyUI PNG) to run instead")
    gen.add_argument("--lora", action="append", metavar="NAME[:STRENGTH]",
                     help="a LoRA from 'models' (\"loras\"), strength 1 by default; repeat for more")
    gen.add_argument("--vae", help="a VAE from 'models' (\"vaes\"), instead of the checkpoint's own")
    gen.add_argument("--hires", type=float, metavar="SCALE", help="hires fix: a second pass at SCALE x the size")
    gen.add_argument("--mask", type=Path, help="inpainting: a PNG the size of --image, white = repaint")
    gen.add_argument("--style", action="append", metavar="NAME", help="a style (see the styles CSV); repeatable")
    gen.add_argument("--family", choices=["sd15", "sdxl", "flux"], help="the checkpoint's family (default: "
                     "recognised from its name)")
    for axis in ("x", "y", "z"):
        gen.add_argument(f"--{axis}", metavar="PARAM=V1,V2", help=f"X/Y/Z plot: the {axis} axis, one job per "
                         "value (A1111's syntax: steps=10-30 (+10), cfg=5,7)")
    gen.add_argument("--confirm-grid", action="store_true", help="run a plot of more than 64 images")
    gen.add_argument("--count", type=int, default=1, help="how many jobs; seeds count up from the first")
    gen.add_argument("--idempotency-key", help="the same key returns the same job (or grid) instead of a new one")
    gen.add_argument("--no-wait", action="store_true", help="queue and return; a worker runs the jobs")
    gen.add_argument("--timeout", type=float, help="give up waiting after this many seconds (the jobs stay queued)")

    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--state", action="append", choices=[s.value for s in JobState])
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--cursor", type=int, help="the 'next' value printed under the previous page")
    jobs.add_argument("--json", action="store_true", help="one JSON object per line")

    show = sub.add_parser("show", help="one job in full, as JSON")
    show.add_argument("job_id")

    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id")

    worker = sub.add_parser(
        "worker", help="run jobs from the queue until stopped (alone, beside replicas started with STUDIO_WORKER=0)",
        description="Run a worker alone: it takes jobs from the queue (Redis when REDIS_URL is set, else the "
                    "diskcache queue in STUDIO_DATA_DIR), runs them on the configured backends and reports their "
                    "progress to every replica. Ctrl-C or SIGTERM stops it; a killed worker's jobs are taken "
                    "over by another once their lease runs out.")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")

    sub.add_parser("models", help="checkpoints, samplers, schedulers, LoRAs, VAEs and upscale models on the server")
    sub.add_parser("styles", help="the styles (shipped, and the CSV files in STUDIO_DATA_DIR/styles)")
    sub.add_parser("hash-password", help="print a password hash to use in AUTH_USERS (reads the password)")
    sub.add_parser("status", help="each backend (a JSON list): whether it answers, its GPU, load and queue")
    prune = sub.add_parser("prune", help="remove finished jobs older than DAYS, with their images and inputs")
    prune.add_argument("--older-than", type=float, required=True, metavar="DAYS", dest="older_than",
                       help="age in days of the jobs to remove (queued and running jobs are never removed)")
    return parser


def _params(args: argparse.Namespace) -> dict[str, Any]:
    """Only what the user set, so a workflow keeps its own values for the rest."""
    mapping = {"prompt": args.prompt, "negative_prompt": args.negative, "checkpoint": args.checkpoint,
               "sampler": args.sampler, "scheduler": args.scheduler, "steps": args.steps, "cfg": args.cfg,
               "seed": args.seed, "width": args.width, "height": args.height, "batch_size": args.batch_size,
               "denoise": args.denoise, "vae": getattr(args, "vae", None), "family": getattr(args, "family", None),
               "styles": getattr(args, "style", None)}
    if getattr(args, "lora", None):
        mapping["loras"] = [_lora(text) for text in args.lora]
    if getattr(args, "hires", None) is not None:
        mapping["hires"] = {"scale": args.hires}
    return {k: v for k, v in mapping.items() if v is not None}


def _lora(text: str) -> dict[str, Any]:
    """``NAME[:STRENGTH]``: ``detail:0.8`` is strength 0.8; a name may hold colons only before a number."""
    name, _, strength = text.rpartition(":")
    try:
        return {"name": name, "strength": float(strength)} if name else {"name": text}
    except ValueError:
        return {"name": text}


def _grid(args: argparse.Namespace) -> dict[str, Any] | None:
    grid = {}
    for axis in ("x", "y", "z"):
        text = getattr(args, axis, None)
        if text is None:
            continue
        param, sep, values = text.partition("=")
        if not sep or not param.strip() or not values.strip():
            raise WorkflowError(f"--{axis} must be PARAM=V1,V2 (e.g. steps=10,20 or cfg=4-8 (+2)), not {text!r}.",
                                field=axis)
        grid[axis] = {"param": param.strip(), "values": values}
    return grid or None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise WorkflowError(f"Cannot read the {what} {path}: {exc.strerror or exc}.", field=what) from exc


async def _generate(studio: Studio, args: argparse.Namespace) -> int:
    params = _params(args)
    if args.denoise is not None and args.image is None and args.workflow is None:
        raise WorkflowError("--denoise needs --image (it is the img2img strength).", field="denoise")
    if args.mask is not None and args.image is None:
        raise WorkflowError("--mask needs --image (the picture the mask was drawn on).", field="mask")
    grid = _grid(args)
    if args.workflow is not None and (grid or args.mask is not None):
        raise WorkflowError("--x/--y/--z and --mask work on the studio's own graph, not with --workflow.",
                            field="workflow")
    record = None
    if args.workflow is not None:
        jobs = await studio.submit_params_to_workflow(
            _read(args.workflow, "workflow"), params, count=args.count, idempotency_key=args.idempotency_key)
    else:
        if args.image is not None and args.denoise is None:
            params["denoise"] = 0.6
        image = _read(args.image, "image") if args.image is not None else None
        mask = _read(args.mask, "mask") if args.mask is not None else None
        if grid is not None:
            record = await studio.submit_grid(GenerationParams.from_dict(params), grid, confirmed=args.confirm_grid,
                                              image=image, mask=mask, idempotency_key=args.idempotency_key)
            jobs = [await studio.job(job_id) for job_id in record["job_ids"]]
            print(f"queued grid {record['grid_id']}: {len(jobs)} image(s)", file=sys.stderr)
        else:
            jobs = await studio.submit(GenerationParams.from_dict(params), count=args.count, image=image, mask=mask,
                                       idempotency_key=args.idempotency_key)
    for job in jobs:
        print(f"queued job {job.id} (seed {job.params.get('seed', '-')})", file=sys.stderr)
    if args.no_wait:
        return EXIT_OK
    # On a shared Redis queue the cluster's workers run it: a worker here would take anyone's jobs to this
    # machine's backend and keep their images here. STUDIO_WORKER=0 says the same for a disk queue.
    shared = studio.settings.redis_url is not None
    if shared:
        print("the queue is shared (REDIS_URL): the workers on it run these jobs ('python -m comfy worker' "
              "starts one)", file=sys.stderr)
    await studio.start(worker=studio.settings.run_worker and not shared, serving=False)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    failed = 0
    try:
        for job in jobs:
            final = await asyncio.wait_for(_follow_with_bar(studio, job), _left(deadline))
            failed += _report(final)
    except TimeoutError:
        waiting = [job.id for job in jobs if not (await studio.job(job.id)).state.is_final]
        print(f"error: gave up waiting after {args.timeout:g} s; job(s) {', '.join(waiting)} stay in the queue "
              f"(a worker runs them later; follow with 'python -m comfy show ID').", file=sys.stderr)
        return EXIT_FAILED
    if record is not None:
        path = studio.grid_image_path(await studio.grid(record["grid_id"]))
        print(f"grid {record['grid_id']}: {path}")
    return EXIT_FAILED if failed else EXIT_OK


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


#: How often a job waiting for an unreachable backend says so again.
WAITING_REMINDER = 30.0


async def _follow_with_bar(studio: Studio, job: Job) -> Job:
    bar = tqdm(total=100, desc=job.id[:8], unit="%", bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}",
               file=sys.stderr, dynamic_ncols=True)
    said_at = 0.0
    try:
        async for event in studio.follow(job.id):
            down = studio.worker.backend_down
            if down and time.monotonic() - said_at >= WAITING_REMINDER:
                # Not a churning bar: one line now, and again every while, naming what it waits for.
                said_at = time.monotonic()
                bar.write(f"job {job.id}: waiting for the backend ({down}); it runs when the backend answers. "
                          "Ctrl+C leaves it queued.", file=sys.stderr)
            if event.kind == "queued":
                place = await studio.position(job.id)
                bar.set_postfix_str("waiting for the backend" if down else
                                    "queued" + (f", {place} ahead" if place else ""))
            elif event.kind == "retrying":
                bar.set_postfix_str("waiting for the backend" if down else f"retrying: {event.message}")
            elif event.progress is not None:
                bar.n = round(event.progress * 100)
                step = f" step {event.step}/{event.steps}" if event.steps else ""
                bar.set_postfix_str(f"{event.node or ''}{step}".strip())
            bar.refresh()
            if event.final:
                break
    finally:
        bar.close()
    return await studio.job(job.id)


def _report(job: Job) -> int:
    if job.state is JobState.SUCCEEDED:
        elapsed = (job.finished_at or 0) - (job.started_at or job.queued_at)
        print(f"job {job.id} done in {elapsed:.1f} s, seed {job.params.get('seed', '-')}:")
        for output in job.outputs:
            print(f"  {output['path']}")
        return 0
    message = (job.error or {}).get("message") or job.state.value
    print(f"job {job.id} {job.state.value}: {message}", file=sys.stderr)
    return 1


async def _print_jobs(studio: Studio, args: argparse.Namespace) -> int:
    states = [JobState(s) for s in args.state] if args.state else None
    page = await studio.jobs(states=states, limit=args.limit, cursor=args.cursor)
    for job in page.jobs:
        if args.json:
            print(json.dumps(job.to_dict()))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.queued_at))
        what = (job.params.get("prompt") or job.kind)[:48]
        extra = f"{job.progress:.0%}" if job.state is JobState.RUNNING else f"{len(job.outputs)} image(s)"
        print(f"{job.id}  {job.state.value:<9}  {when}  {extra:<10}  {what}")
    if page.next_cursor is not None and not args.json:
        print(f"(more: --cursor {page.next_cursor})")
    return EXIT_OK


async def _run_worker(studio: Studio, args: argparse.Namespace) -> int:
    """Run jobs until Ctrl-C or SIGTERM (or, with --burst, until the queue is empty), then stop cleanly:
    prompts still running on a backend are re-attached by the next worker, their leases let one take them."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settings = studio.settings
    store = (f"Redis {settings.redis_url_redacted} (prefix {settings.redis_prefix})" if settings.redis_url
             else f"diskcache in {settings.queue_dir}")
    backends = ", ".join(backend.name for backend in studio.pool.backends)
    print(f"worker {studio.worker.id}: queue on {store}; backends {backends}; Ctrl-C or SIGTERM stops it",
          file=sys.stderr, flush=True)
    if settings.redis_url:
        print(outputs_sharing(settings)[1], file=sys.stderr, flush=True)
    await studio.start(serving=False, burst=args.burst)
    finished = asyncio.ensure_future(studio.worker_done())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([finished, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if stop.is_set():
        print("worker stopping: running prompts stay on their backend and are picked up again", file=sys.stderr,
              flush=True)
    return EXIT_OK


def _hash_password() -> int:
    import getpass

    from comfy.auth import hash_password

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        raise WorkflowError("The password is empty.", field="password")
    print(hash_password(password))
    return EXIT_OK


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "hash-password":
        return _hash_password()
    settings = load_settings()
    if args.command in ("generate", "worker", "prune", "jobs"):
        print(f"data folder: {settings.data_dir}", file=sys.stderr)
    async with Studio(settings) as studio:
        if args.command == "generate":
            return await _generate(studio, args)
        if args.command == "jobs":
            return await _print_jobs(studio, args)
        if args.command == "show":
            print(json.dumps((await studio.job(args.job_id)).to_dict(), indent=2))
            return EXIT_OK
        if args.command == "cancel":
            job = await studio.cancel(args.job_id)
            print(f"job {job.id}: {'cancel requested (stopping on the server)' if job.cancel_requested and not job.state.is_final else job.state.value}")
            return EXIT_OK
        if args.command == "worker":
            return await _run_worker(studio, args)
        if args.command == "models":
            models = await studio.models()
            print(json.dumps(dataclasses.asdict(models), indent=2))
            return EXIT_OK
        if args.command == "styles":
            print(json.dumps([style.to_dict() for style in studio.styles()], indent=2))
            return EXIT_OK
        if args.command == "status":
            print(json.dumps([status.to_dict() for status in await studio.backends_status()], indent=2))
            return EXIT_OK
        if args.command == "prune":
            report = await studio.prune(args.older_than)
            print(report.sentence())
            return EXIT_OK
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = asyncio.run(_dispatch(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `python -m comfy status | head`: the reader left; say nothing, and keep Python from saying more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ComfyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; queued jobs stay in the queue (cancel them with 'python -m comfy cancel ID')",
              file=sys.stderr)
        return 130
