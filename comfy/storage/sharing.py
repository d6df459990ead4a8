"""Whether every process can read every job's images: what start-up says when several share one Redis.

With ``REDIS_URL`` set, a job may run on a worker on another machine than the replica a page asks. Its images
are then readable there only from S3 (``S3_BUCKET``: the replica redirects to a presigned URL) or from one
outputs folder every process mounts (``STUDIO_OUTPUTS_DIR`` or ``STUDIO_DATA_DIR`` on a shared volume, said with
``STUDIO_SHARED_DATA=1``: a folder's path cannot tell whether another machine sees the same one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from comfy.settings import Settings

__all__ = ["inputs_sharing", "outputs_sharing"]


def outputs_sharing(settings: Settings) -> tuple[bool, str]:
    """(fine, the sentence to print at start-up) for how outputs reach every replica.

    >>> from comfy.settings import Settings
    >>> outputs_sharing(Settings(_env_file=None))[0]
    True
    """
    if settings.redis_url is None:
        return True, f"Images: in {settings.outputs_dir} (one machine)."
    if settings.s3_bucket:
        return True, f"Images: copied to S3 bucket {settings.s3_bucket}; any replica serves them (presigned URLs)."
    if settings.shared_data:
        return True, (f"Images: in {settings.outputs_dir}, a folder every replica and worker shares "
                      "(STUDIO_SHARED_DATA=1).")
    return False, ("REDIS_URL is set but neither S3_BUCKET nor a shared data folder is: a job's images stay on the "
                   f"machine of the worker that made them ({settings.outputs_dir}), and replicas elsewhere answer "
                   "404 for them. Set S3_BUCKET, or mount one STUDIO_OUTPUTS_DIR (or STUDIO_DATA_DIR) on every replica "
                   "and worker and set STUDIO_SHARED_DATA=1.")


def inputs_sharing(settings: Settings) -> str | None:
    """The start-up sentence when uploaded images (img2img, masks, a workflow's images) cannot reach workers.

    >>> from comfy.settings import Settings
    >>> inputs_sharing(Settings(_env_file=None)) is None
    True
    """
    if settings.redis_url is None or settings.shared_data:
        return None
    return ("REDIS_URL is set without a shared data folder: jobs with an uploaded image (img2img, inpainting, a "
            "workflow's images) are refused, since a worker on another machine could not read the image. Mount "
            "one STUDIO_DATA_DIR on every replica and worker and set STUDIO_SHARED_DATA=1.")
