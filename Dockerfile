# ComfyUI Studio: the studio UI at / and the REST API (/api/v1, /docs) in one process.
#
#   docker build -t comfyui-studio .
#   docker run -p 7860:7860 -v studio-data:/data -e COMFYUI_URL=https://<pod>-8188.proxy.runpod.net comfyui-studio
#
# ComfyUI itself runs elsewhere (a RunPod pod, another container, your GPU box): this image needs no GPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/studio \
    STUDIO_DATA_DIR=/data \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860

# UID 1000: the user Hugging Face Spaces and most hosts expect, so a mounted /data stays writable.
RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin studio \
    && mkdir -p /data \
    && chown studio:studio /data

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=studio:studio . .

USER 1000
# Jobs, outputs and uploaded images live here: mount a volume to keep them across restarts. It must be a
# local disk (a Docker volume is): the queue is SQLite in WAL mode, and the studio refuses NFS/SMB/FUSE mounts.
# Images may go to such a mount with STUDIO_OUTPUTS_DIR, or to S3.
VOLUME ["/data"]
EXPOSE 7860

# Liveness only (/healthz touches nothing); /readyz also checks ComfyUI, which may be down for a while.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GRADIO_SERVER_PORT', '7860'), timeout=4)"]

CMD ["python", "app.py"]
