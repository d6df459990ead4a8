"""How the queue lies in diskcache: its keys, the index buckets and run-order chunks, and one transaction's reads and writes.

See :mod:`comfy.jobs.queue` for the layout drawn out. Every value written in a transition fits in one SQLite page.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from typing import Any

import diskcache

from comfy.errors import JobNotFound
from comfy.jobs.records import QUEUED, JobState

QUEUE_KEY = "queue"
PENDING_KEY = "pending:{}"
JOB_KEY = "job:{}"
BUCKET_KEY = "bucket:{}"
OWNERS_KEY = "owners"
IDEMPOTENCY_KEY = "idem:{}"
COUNTS_KEY = "counts"
#: A job's workflow, apart from its record: written when it is set, so the progress written four times a
#: second rewrites a few hundred bytes, not a graph of up to 25 MB. The record says it is there.
WORKFLOW_KEY = "workflow:{}"
HEAVY_FLAG = "workflow_stored"
#: An owner's jobs (owner code 0: the jobs nobody owns), oldest first, in chunks of seqs: so one owner's
#: page and total read that owner's jobs, not the whole index. Only the last chunk of an owner is not full.
OWNED_KEY = "owned:{}:{}"
#: Set once the owners' lists cover every job (a queue made before them gets them built at open).
OWNED_READY_KEY = "owned_ready"

# What a commit costs is the SQLite pages it writes (to the WAL), so every value written in a transition
# fits in one page (< 4 KiB, no overflow pages) and the blobs that grow are cut into chunks.
#: Jobs per index bucket: 2.75 KiB of state bytes, then 8-byte ids, then 2-byte owner codes.
BUCKET_SIZE = 256
#: Ids per chunk of the pending order (2 KiB).
PENDING_CHUNK = 256
ID_BYTES = 8
#: Seqs per chunk of an owner's list (4 bytes each: 2 KiB).
OWNED_CHUNK = 512
_SEQ = struct.Struct("<I")
_OWNED_BYTES = OWNED_CHUNK * _SEQ.size
_IDS_AT = BUCKET_SIZE
_OWNERS_AT = (1 + ID_BYTES) * BUCKET_SIZE
_BUCKET_BYTES = (1 + ID_BYTES + 2) * BUCKET_SIZE
_OWNERS_FORMAT = f"<{BUCKET_SIZE}H"
MAX_OWNERS = 2**16 - 1


CODE = {state.value: code for code, state in enumerate(JobState, start=1)}
_FREE, PRUNED = 0, 0xFF  # index codes of a slot not used yet, and of a deleted job
STATE_OF = {code: JobState(value) for value, code in CODE.items()}


class Txn:
    """The reads and writes of one transaction; chunks, buckets and the head are written once, at the end.

    The head changes only when a bucket or a chunk is started or dropped (once per 256 jobs or so), so
    most transitions write just the record, one bucket and one chunk: each write is a page in the WAL.
    """

    def __init__(self, cache: diskcache.Cache, tails: dict[int, int] | None = None) -> None:
        self.cache = cache
        #: Owner code -> the number of its last list chunk, as last seen (a hint: see :func:`owned_tail`).
        self._tails = tails if tails is not None else {}
        self._owned: dict[tuple[int, int], bytes] = {}
        self._head: dict[str, Any] | None = None
        self._head_dirty = False
        self._chunks: dict[int, bytes] = {}
        self._dirty_chunks: set[int] = set()
        self._buckets: dict[int, bytearray] = {}
        self._dirty_buckets: set[int] = set()
        #: Jobs per state (by state value), kept in step with the index; None until read, {} when the
        #: queue has none yet (an older queue: counts() builds them once from the buckets).
        self._counts: dict[str, int] | None = None
        self._tracking = False
        self._counts_dirty = False

    @property
    def head(self) -> dict[str, Any]:
        if self._head is None:
            self._head = load_head(self.cache.get(QUEUE_KEY))
        return self._head

    def flush(self) -> None:
        kept = set(self.head["chunks"]) if self._dirty_chunks else set()
        for number in self._dirty_chunks:
            if number in kept:
                self.cache.set(PENDING_KEY.format(number), self._chunks[number])
            else:
                self.cache.delete(PENDING_KEY.format(number))
        for number in self._dirty_buckets:
            self.cache.set(BUCKET_KEY.format(number), bytes(self._buckets[number]))
        for (code, number), data in self._owned.items():
            self.cache.set(OWNED_KEY.format(code, number), data)
        if self._head_dirty:
            self.cache.set(QUEUE_KEY, self._head)
        if self._counts_dirty:
            self.cache.set(COUNTS_KEY, self._counts)

    # -- running counts per state, changed in the same transaction as the index ---------------------

    def _count(self, old_code: int, new_code: int) -> None:
        if self._counts is None:
            stored = self.cache.get(COUNTS_KEY)
            self._counts, self._tracking = dict(stored or {}), stored is not None
        if not self._tracking or old_code == new_code:
            return
        for code, step in ((old_code, -1), (new_code, 1)):
            state = STATE_OF.get(code)
            if state is not None:
                self._counts[state.value] = self._counts.get(state.value, 0) + step
        self._counts_dirty = True

    def build_counts(self) -> dict[str, int]:
        """Count every bucket once and keep the counts (for a queue made before they were kept)."""
        counts = {state.value: 0 for state in JobState}
        number = self.head["bucket"]
        for n in range(number, -1, -1):
            buf = self.cache.get(BUCKET_KEY.format(n))
            if buf is not None:
                for code, state in STATE_OF.items():
                    counts[state.value] += buf.count(code, 0, BUCKET_SIZE)
        self._counts, self._tracking, self._counts_dirty = counts, True, True
        return counts

    # -- the index: buckets of (state, id, owner) by seq ------------------------------------------

    def bucket(self, number: int) -> bytearray:
        buf = self._buckets.get(number)
        if buf is None:
            stored = self.cache.get(BUCKET_KEY.format(number))
            buf = self._buckets[number] = bytearray(stored if stored is not None else _BUCKET_BYTES)
        return buf

    def next_seq(self) -> int:
        """The next sequence number: the first free slot of the newest bucket (slots are never freed)."""
        number = self.head["bucket"]
        free = self.bucket(number).find(_FREE, 0, BUCKET_SIZE)
        if free == -1:
            number, free = number + 1, 0
            self.head["bucket"] = number
            self._head_dirty = True
        return number * BUCKET_SIZE + free + 1

    def index(self, seq: int, code: int, job_id: str | None = None, owner_code: int | None = None) -> None:
        number, offset = _slot(seq)
        buf = self.bucket(number)
        self._dirty_buckets.add(number)
        self._count(buf[offset], code)
        buf[offset] = code
        if job_id is not None:
            buf[_IDS_AT + offset * ID_BYTES:_IDS_AT + (offset + 1) * ID_BYTES] = bytes.fromhex(job_id)
        if owner_code is not None:
            struct.pack_into("<H", buf, _OWNERS_AT + offset * 2, owner_code)

    # -- the owners' lists: chunks of 4-byte seqs, oldest first ------------------------------------

    def own(self, owner_code: int, seq: int) -> None:
        """Add a new job's ``seq`` to the end of its owner's list (seqs only grow, so the list stays sorted)."""
        number = owned_tail(self.cache, owner_code, self._tails, self._owned)
        key = (owner_code, number)
        data = self._owned.get(key)
        if data is None:
            data = self.cache.get(OWNED_KEY.format(owner_code, number), b"")
        if len(data) >= _OWNED_BYTES:  # full: this seq starts the next chunk
            key, data = (owner_code, number + 1), b""
            self._tails[owner_code] = number + 1
        self._owned[key] = data + _SEQ.pack(seq)

    def build_owned(self) -> None:
        """Fill the owners' lists from the index (a queue made before they were kept), oldest job first."""
        for number in range(self.head["bucket"] + 1):
            buf = self.cache.get(BUCKET_KEY.format(number))
            if buf is None:
                continue
            owners = _owners(buf)
            for offset in range(BUCKET_SIZE):
                if buf[offset] != _FREE:
                    self.own(owners[offset], number * BUCKET_SIZE + offset + 1)

    # -- the pending order: chunks of 8-byte ids, front first ---------------------------------------

    def chunk(self, number: int) -> bytes:
        if number not in self._chunks:
            self._chunks[number] = self.cache.get(PENDING_KEY.format(number), b"")
        return self._chunks[number]

    def pending(self) -> bytes:
        return b"".join(self.chunk(number) for number in self.head["chunks"])

    def first_pending(self) -> str | None:
        first = self.chunk(self.head["chunks"][0]) if self.head["chunks"] else b""
        return first[:ID_BYTES].hex() if first else None

    def remove_pending(self, job_id: str) -> None:
        needle = bytes.fromhex(job_id)
        for at, number in enumerate(self.head["chunks"]):
            data = self.chunk(number)
            found = find_id(data, needle)
            if found is not None:
                self._put_chunk(at, data[:found] + data[found + ID_BYTES:])
                return

    def insert_pending(self, job_id: str, index: int | None) -> None:
        """Insert at ``index`` (0 = front, clamped), or at the back when None."""
        needle = bytes.fromhex(job_id)
        at, cut = self._locate(index)
        if at == len(self.head["chunks"]):
            self._new_chunk(at, needle)
            return
        data = self.chunk(self.head["chunks"][at])
        if len(data) < PENDING_CHUNK * ID_BYTES:
            self._put_chunk(at, data[:cut] + needle + data[cut:])
        elif cut == 0:
            self._new_chunk(at, needle)
        elif cut == len(data):
            self._new_chunk(at + 1, needle)
        else:  # split the full chunk around the new id
            self._put_chunk(at, data[:cut] + needle)
            self._new_chunk(at + 1, data[cut:])

    def _locate(self, index: int | None) -> tuple[int, int]:
        """(chunk, byte offset in it) of place ``index`` in the pending order; the back when None."""
        chunks = self.head["chunks"]
        if not chunks:
            return 0, 0
        if index is not None:
            remaining = max(index, 0) * ID_BYTES
            for at, number in enumerate(chunks):
                length = len(self.chunk(number))
                if remaining < length:
                    return at, remaining
                remaining -= length
        return len(chunks) - 1, len(self.chunk(chunks[-1]))

    def _put_chunk(self, at: int, data: bytes) -> None:
        number = self.head["chunks"][at]
        self._chunks[number] = data
        self._dirty_chunks.add(number)
        if not data and len(self.head["chunks"]) > 1:  # the last one stays, empty, for the next job
            del self.head["chunks"][at]
            self._head_dirty = True

    def _new_chunk(self, at: int, data: bytes) -> None:
        number = self.head["next_chunk"]
        self.head["next_chunk"] = number + 1
        self.head["chunks"].insert(at, number)
        self._head_dirty = True
        self._put_chunk(at, data)

    # -- records ------------------------------------------------------------------------------------

    def record(self, job_id: str) -> dict[str, Any]:
        record = self.cache.get(JOB_KEY.format(job_id))
        if record is None:
            raise JobNotFound(job_id)
        return record

    def save(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Write a changed record; keep the state index and the pending order in step with it."""
        light, heavy = split_heavy(new)
        if heavy is not None:
            self.cache.set(WORKFLOW_KEY.format(new["id"]), heavy)
        self.cache.set(JOB_KEY.format(new["id"]), light)
        if old["state"] != new["state"]:
            self.index(new["seq"], CODE[new["state"]])
            if old["state"] == QUEUED:
                self.remove_pending(new["id"])
            elif new["state"] == QUEUED:  # a retry keeps its place: the front
                self.insert_pending(new["id"], 0)


def owned_tail(cache: diskcache.Cache, owner_code: int, tails: dict[int, int],
               pending: dict[tuple[int, int], bytes] | None = None) -> int:
    """The number of ``owner_code``'s last list chunk: from the hint in ``tails``, past every full chunk
    (another process may have filled some since)."""
    number = tails.get(owner_code, 0)
    while True:
        data = (pending or {}).get((owner_code, number))
        if data is None:
            data = cache.get(OWNED_KEY.format(owner_code, number), b"")
        if len(data) < _OWNED_BYTES:
            break
        nxt = (pending or {}).get((owner_code, number + 1))
        if nxt is None and cache.get(OWNED_KEY.format(owner_code, number + 1)) is None:
            break  # full, and nothing after it yet: it is the last
        number += 1
    tails[owner_code] = number
    return number


def owned_page(cache: diskcache.Cache, owner_code: int, tails: dict[int, int], codes: set[int], highest: int | None,
               limit: int) -> tuple[list[tuple[int, str]], int]:
    """(up to ``limit`` + 1 (seq, id) newest first from seq ``highest``, total) of one owner's jobs in ``codes``.

    Reads that owner's list and the index buckets its jobs are in, nothing else: the cost follows the
    number of jobs the owner ever had (a pruned job stays in the list, and is skipped), not the queue's.
    The owner's seqs in one bucket are taken as a run; a run without gaps is counted and searched with
    ``bytes`` methods, as the whole index is.
    """
    found: list[tuple[int, str]] = []
    total = 0
    number, buf = -1, b""
    for chunk in range(owned_tail(cache, owner_code, tails), -1, -1):
        data = cache.get(OWNED_KEY.format(owner_code, chunk), b"")
        seqs = struct.unpack(f"<{len(data) // _SEQ.size}I", data)
        end = len(seqs)
        while end:
            bucket = (seqs[end - 1] - 1) // BUCKET_SIZE
            base = bucket * BUCKET_SIZE
            start = bisect.bisect_left(seqs, base + 1, 0, end)  # seqs[start:end]: this owner's in the bucket
            if bucket != number:
                number, buf = bucket, cache.get(BUCKET_KEY.format(bucket)) or b""
            if buf:
                low, high = seqs[start] - base - 1, seqs[end - 1] - base - 1
                top = high if highest is None else min(high, highest - base - 1)
                if high - low + 1 == end - start:  # no gaps: whole runs of the bucket's bytes
                    total += sum(buf.count(code, low, high + 1) for code in codes)
                    offsets: Iterator[int] = (o for o in _offsets_down(buf, top, codes) if o >= low) \
                        if len(found) <= limit else iter(())
                else:
                    matching = [seq - base - 1 for seq in seqs[start:end] if buf[seq - base - 1] in codes]
                    total += len(matching)
                    offsets = (o for o in reversed(matching) if o <= top)
                for offset in offsets:
                    if len(found) > limit:
                        break
                    found.append((base + offset + 1, buf[_IDS_AT + offset * ID_BYTES:_IDS_AT + (offset + 1) * ID_BYTES].hex()))
            end = start
    return found, total


def split_heavy(record: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(the record to store, the workflow to store apart or None when there is no new one)."""
    if record.get("workflow") is None:
        return record, None
    return {**record, "workflow": None, HEAVY_FLAG: True}, record["workflow"]


def with_heavy(cache: diskcache.Cache, record: dict[str, Any]) -> dict[str, Any]:
    """The record with its workflow read back (records of older versions hold theirs inline)."""
    if record.get(HEAVY_FLAG) and record.get("workflow") is None:
        return {**record, "workflow": cache.get(WORKFLOW_KEY.format(record["id"]))}
    return record


def load_head(stored: dict[str, Any] | None) -> dict[str, Any]:
    if stored is None:
        return {"bucket": 0, "chunks": [], "next_chunk": 0}
    return {**stored, "chunks": list(stored["chunks"])}


def _slot(seq: int) -> tuple[int, int]:
    """(bucket number, offset in it) of a sequence number; sequence numbers start at 1."""
    return divmod(seq - 1, BUCKET_SIZE)


def find_id(pending: bytes, needle: bytes) -> int | None:
    at = pending.find(needle)
    while at != -1 and at % ID_BYTES:  # a match across two ids: look further
        at = pending.find(needle, at + 1)
    return None if at == -1 else at


def is_id(job_id: str) -> bool:
    try:
        return len(bytes.fromhex(job_id)) == ID_BYTES
    except ValueError:
        return False


def _owners(buf: bytes) -> tuple[int, ...]:
    return struct.unpack_from(_OWNERS_FORMAT, buf, _OWNERS_AT)


def bucket_matches(buf: bytes, number: int, codes: set[int], highest: int | None = None,
                   limit: int = BUCKET_SIZE) -> Iterator[tuple[int, str]]:
    """(seq, id) of a bucket's jobs in ``codes``, newest first from seq ``highest``, at most ``limit``."""
    base = number * BUCKET_SIZE
    top = BUCKET_SIZE - 1 if highest is None else min(highest - base - 1, BUCKET_SIZE - 1)
    found = 0
    for offset in _offsets_down(buf, top, codes):
        yield base + offset + 1, buf[_IDS_AT + offset * ID_BYTES:_IDS_AT + (offset + 1) * ID_BYTES].hex()
        found += 1
        if found >= limit:
            return


def _offsets_down(buf: bytes, top: int, codes: set[int]) -> Iterator[int]:
    if len(codes) == 1:  # one state (expired(), most filters): let bytes.rfind skip the rest
        (code,) = codes
        at = buf.rfind(code, 0, top + 1) if top >= 0 else -1
        while at != -1:
            yield at
            at = buf.rfind(code, 0, at) if at else -1
        return
    for offset in range(top, -1, -1):
        if buf[offset] in codes:
            yield offset
