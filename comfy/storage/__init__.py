"""Storage: where images and saved workflows are kept.

``local`` writes outputs (PNG with metadata) and kept inputs under the data folder; ``s3`` is the
optional S3-compatible store; ``backlog`` and ``uploader`` keep and work off the persistent list of
uploads still to do; ``library`` holds the users' saved workflows. May import ``comfy.errors``,
``comfy.graph`` and the job records, leases and queue of ``comfy.jobs``; never the worker, the backends or
a door.
"""
