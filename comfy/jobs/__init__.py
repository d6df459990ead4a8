"""Jobs: the persistent queue, the worker that runs its jobs, and the events a job emits.

``queue`` (the records, their states, leases and idempotency keys on diskcache) and ``events`` (the
in-process bus) import only ``comfy.errors``. ``worker`` is the one module here that reaches out: it
claims jobs, runs them on ``comfy.backends`` and keeps their images with ``comfy.storage``.
``store`` is the async contract over both stores: the diskcache queue, or ``redis_store`` (with its Lua in
``redis_scripts``) for several replicas; ``redis_events`` carries the bus's events and cancels between them.
"""
