"""Commands packed by hiredis's C code on redis-py's asyncio connections (the parser already is).

redis-py's synchronous connections pack commands with ``hiredis.pack_command`` when hiredis is installed;
its asyncio connections still build each command in Python (a join per argument, an encoder call each),
which is a fifth of the client's CPU per job on the Redis store. :func:`use_hiredis_packing` gives a
client's pool connection classes that pack in C, whatever the scheme (redis://, rediss://, unix://).
Without hiredis nothing changes.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import DataError

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is in requirements.txt
    hiredis = None

__all__ = ["use_hiredis_packing"]

_CLASSES: dict[type, type] = {}


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "CLIENT SETINFO" and the like are sent as separate words
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc


def use_hiredis_packing(client: aioredis.Redis) -> aioredis.Redis:
    """``client``, its pool's connections now packing commands with hiredis (when it is installed)."""
    pool = client.connection_pool
    base = pool.connection_class
    if hiredis is None or not hasattr(hiredis, "pack_command") or issubclass(base, _HiredisPacking):
        return client
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    pool.connection_class = _CLASSES[base]
    return client
