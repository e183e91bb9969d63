"""The journal as a stream: journal entries for replicas, over Redis Streams or HTTP (issue 14).

Every consumer of the exchange (settlement's ledger, market data, provisioning, `gpux settle`)
is a projection of the journal with its own cursor, the last journal seq it applied.  In the
exchange's process the projections follow the bus; elsewhere they read the journal's entries:

* **A chunk** is a run of consecutive journal entries — the raw payloads the journal holds
  (msgpack `exchange.entries` records) — with the seq of the first.  One encoding for the Redis
  stream entries and the journal-tail endpoint (``GET /v1/admin/journal``), little endian::

      offset  size  field
      0       2     magic  b"GJ"
      2       1     version 1
      3       1     0
      4       8     first  u64, the journal seq of the first entry
      12      4     count  u32, how many entries follow
      16      ...   count times: u32 length, then that many payload bytes

* **The stream** ``{prefix}:journal`` holds one entry per chunk, field ``c`` = the chunk, with
  the stream id ``<last seq>-0``: Redis refuses an id at or below the stream's last one, so a
  chunk sent twice is refused, never duplicated.  The publisher goes further: it adds a chunk
  only if the stream still ends where it left it (a small Lua script: XREVRANGE, then XADD), so a
  Redis that came back without its latest writes, or empty, is noticed at the next send even when
  the client reconnected without an error.  A reader whose cursor is C reads the ids after
  ``C-0``; a chunk whose first seq is above C + 1 means a gap (Redis restarted empty or without
  its latest writes, the stream trimmed past C): the reader backfills it from the exchange.

* `JournalReader` reads entries from the journal files incrementally (a tail follower: it keeps
  its place, so the next read starts where the last one ended), never past the last durable seq.

* `JournalPublisher` (inside ``gpux serve --redis URL``) is the projection that writes the
  stream: off the order path, woken by each durable batch, it reads the journal from its cursor
  (the stream's last id when it starts) and XADDs chunks; on connection errors it retries with
  backoff and goes on from its cursor, so nothing is dropped (the journal has it).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from zlib import crc32

from exchange.journal import HEADER, HEADER_SIZE, MAX_PAYLOAD, JournalError, segments
from exchange.supervise import supervise

log = logging.getLogger("gpux.stream")

CHUNK_HEADER = struct.Struct("<2sBxQI")
MAGIC = b"GJ"
VERSION = 1
_LEN = struct.Struct("<I")
CHUNK_ENTRIES = 2000  # entries per stream entry at most
CHUNK_BYTES = 1 << 20  # ... and about this many payload bytes
FIELD = b"c"
# XADD KEYS[1] MAXLEN ~ ARGV[2] ARGV[3] c ARGV[4], only if the stream ends at seq ARGV[1] (0: empty)
# and, when ARGV[5] is not empty (a leader with a lease, exchange.lease), only if KEYS[2] holds the
# token ARGV[5]; returns {1, that seq} when added, {0, the seq it ends at}, or {-1, 0} when fenced
_XADD_AFTER = """
if ARGV[5] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[5] then return {-1, 0} end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last = 0
if #top > 0 then last = tonumber(string.match(top[1][1], '^(%d+)')) end
if last ~= tonumber(ARGV[1]) then return {0, last} end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[3], 'c', ARGV[4])
return {1, last}
"""


class ChunkError(ValueError):
    """Bytes that are not a journal chunk."""


def encode_chunk(first: int, payloads: list[bytes]) -> bytes:
    """A chunk: the entries ``first``, ``first + 1``, ... (see the module docstring)."""
    parts = [CHUNK_HEADER.pack(MAGIC, VERSION, first, len(payloads))]
    pack = _LEN.pack
    for p in payloads:
        parts.append(pack(len(p)))
        parts.append(p)
    return b"".join(parts)


def decode_chunk(blob: bytes) -> tuple[int, list[bytes]]:
    """(first seq, payloads) of a chunk; ChunkError if it is not one."""
    if len(blob) < CHUNK_HEADER.size:
        raise ChunkError(f"a chunk has a {CHUNK_HEADER.size}-byte header; got {len(blob)} bytes")
    magic, version, first, count = CHUNK_HEADER.unpack_from(blob, 0)
    if magic != MAGIC or version != VERSION:
        raise ChunkError(f"not a journal chunk (magic {magic!r}, version {version})")
    out: list[bytes] = []
    off = CHUNK_HEADER.size
    view = memoryview(blob)
    unpack = _LEN.unpack_from
    for _ in range(count):
        if off + 4 > len(blob):
            raise ChunkError("the chunk ends inside an entry's length")
        (n,) = unpack(blob, off)
        off += 4
        if off + n > len(blob):
            raise ChunkError("the chunk ends inside an entry")
        out.append(bytes(view[off:off + n]))
        off += n
    if off != len(blob):
        raise ChunkError(f"{len(blob) - off} bytes after the chunk's last entry")
    return first, out


def stream_key(prefix: str) -> str:
    return f"{prefix}:journal"


def stream_id(last_seq: int) -> str:
    """The stream id of the chunk that ends at journal seq ``last_seq``."""
    return f"{last_seq}-0"


def id_seq(entry_id: bytes | str) -> int:
    """The journal seq a stream id stands for (its last entry's)."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(s.partition("-")[0])


class JournalReader:
    """Reads a journal directory from any seq on, keeping its place between reads.

        reader = JournalReader(data_dir / "journal")
        payloads = reader.read(after=120, limit=1000, upto=durable_seq)   # seqs 121, 122, ...

    Safe for one thread at a time.  The journal's writer may append meanwhile: only entries up to
    ``upto`` (the last durable seq) are read, and a record is checked (seq, CRC) before use."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._next = 0  # the seq at _path/_offset (0: no place kept)
        self._first = 0  # first seq of _path
        self._path: Path | None = None
        self._offset = 0
        self._index: dict[Path, list[tuple[int, int]]] = {}  # sparse (seq, offset) per segment
        self._file: Any = None  # _path, open for reading
        self._file_path: Path | None = None

    def _read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes (fewer at the end) of the current segment from ``offset``; the file stays
        open between reads (a follower reads the same segment many times)."""
        if self._file_path != self._path:
            self.close()
            self._file = open(self._path, "rb")  # noqa: SIM115 - kept open, closed by close()
            self._file_path = self._path
        avail = os.fstat(self._file.fileno()).st_size - offset  # read no more than is there: a big
        if avail <= 0:  # read buffer is allocated whole, and most reads are a few hundred bytes
            return b""
        self._file.seek(offset)
        return self._file.read(min(size, avail))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._file_path = None

    def _seek(self, seq: int) -> None:
        """Place the reader at journal seq ``seq``."""
        if self._next == seq and self._path is not None:
            return
        segs = segments(self.directory)
        if not segs:
            raise JournalError(f"{self.directory}: no journal segments")
        i = bisect.bisect_right([s for s, _ in segs], seq) - 1
        if i < 0:
            raise JournalError(f"{self.directory}: the journal starts at seq {segs[0][0]}, after seq {seq}")
        first, path = segs[i]
        idx = self._index.setdefault(path, [(first, 0)])
        k = bisect.bisect_right(idx, (seq, 1 << 62)) - 1
        at, offset = idx[k]
        with open(path, "rb") as f:
            while at < seq:
                f.seek(offset)
                head = f.read(HEADER_SIZE)
                if len(head) < HEADER_SIZE:
                    raise JournalError(f"{path}: seq {seq} is past the end of the journal")
                length, _, got = HEADER.unpack(head)
                if got != at or length > MAX_PAYLOAD:
                    raise JournalError(f"{path}: record has seq {got} where {at} was expected at byte {offset}")
                offset += HEADER_SIZE + length
                at += 1
                if at % 4096 == 0 and idx[-1][0] < at:
                    idx.append((at, offset))
        self._path, self._first, self._offset, self._next = path, first, offset, seq

    def read(self, after: int, limit: int = CHUNK_ENTRIES, upto: int | None = None,
             max_bytes: int = CHUNK_BYTES) -> list[bytes]:
        """The payloads of seqs ``after + 1`` ... (at most ``limit`` of them, about ``max_bytes``,
        none past ``upto``).  JournalError if the journal does not hold seq ``after + 1`` (it
        starts later) or a record is damaged."""
        start = after + 1
        if upto is not None and upto < start or limit < 1:
            return []
        self._seek(start)
        out: list[bytes] = []
        size = 0
        seq = start
        while len(out) < limit and (upto is None or seq <= upto) and size < max_bytes:
            assert self._path is not None
            want = max(max_bytes - size, HEADER_SIZE) + HEADER_SIZE
            if upto is not None:  # a follower near the end reads a few records: guess their size
                want = min(want, max(4096, (upto - seq + 1) * 512))
            buf = self._read_at(self._offset, want)
            off = 0
            zeros = False  # a preallocated segment's zeros: its records end here (or are not written yet)
            while len(out) < limit and (upto is None or seq <= upto) and size < max_bytes:
                if len(buf) - off < HEADER_SIZE:
                    break
                length, crc, got = HEADER.unpack_from(buf, off)
                if got == 0 and length == 0:
                    zeros = True
                    break
                end = off + HEADER_SIZE + length
                if end > len(buf):
                    if off == 0:  # one record bigger than the read: read it whole
                        buf = self._read_at(self._offset, HEADER_SIZE + length)
                        if len(buf) < HEADER_SIZE + length:
                            break
                        end = HEADER_SIZE + length
                    else:
                        break
                if got != seq or crc32(memoryview(buf)[off + 8:end]) != crc:
                    raise JournalError(f"{self._path}: bad record at byte {self._offset + off} "
                                       f"(seq {got}, expected {seq})")
                out.append(buf[off + HEADER_SIZE:end])
                size += length
                off = end
                seq += 1
            self._offset += off
            self._next = seq
            if (off == 0 or zeros) and (upto is None or seq <= upto) and len(out) < limit:
                # the end of this segment: go on in the next one, if it exists and starts here
                nxt = self.directory / f"{seq:020d}.seg"
                if nxt.exists() and (zeros or len(buf) < HEADER_SIZE):
                    self._path, self._first, self._offset = nxt, seq, 0
                    continue
                break
        return out

    def chunk(self, after: int, limit: int = CHUNK_ENTRIES, upto: int | None = None,
              max_bytes: int = CHUNK_BYTES) -> bytes | None:
        """`read` as an encoded chunk (None when there is nothing after ``after``)."""
        payloads = self.read(after, limit, upto, max_bytes)
        return encode_chunk(after + 1, payloads) if payloads else None


class JournalTail:
    """The journal's durable entries for the journal-tail endpoint (``GET /v1/admin/journal``).

        tail = JournalTail(data_dir / "journal", durable_seq=journal.last_seq)
        bus.subscribe(lambda batch: tail.durable_to(engine.seq))
        blob = tail.chunk(after=120, limit=1000)     # in a worker thread: file reads
    """

    MAX_LIMIT = 10_000
    MAX_BYTES = 8 << 20

    def __init__(self, journal_dir: Path, durable_seq: int = 0) -> None:
        self.reader = JournalReader(journal_dir)
        self.durable = durable_seq
        self._lock = threading.Lock()
        self.served = 0  # entries served

    def durable_to(self, seq: int) -> None:
        if seq > self.durable:
            self.durable = seq

    def chunk(self, after: int, limit: int) -> bytes:
        """The entries after ``after`` (at most ``limit``, none past the durable end) as a chunk;
        an empty chunk when there is none yet.  JournalError if the journal lacks seq ``after + 1``."""
        with self._lock:
            payloads = self.reader.read(after, min(limit, self.MAX_LIMIT), self.durable, self.MAX_BYTES) \
                if after < self.durable else []
        self.served += len(payloads)
        return encode_chunk(after + 1, payloads)

    def close(self) -> None:
        with self._lock:
            self.reader.close()


class JournalPublisher:
    """``gpux serve --redis URL``: the journal, chunk by chunk, to the stream ``{prefix}:journal``.

        pub = JournalPublisher(url, prefix, data_dir / "journal", durable_seq=journal.last_seq)
        bus.subscribe(lambda batch: pub.wake(engine.seq))   # after every durable batch
        await pub.start(); ...; await pub.close()

    Its cursor is the last journal seq in the stream: read from the stream (its last id) when it
    connects; if the stream is empty (a new or wiped Redis) it goes on from where it was (at
    start: from the journal's end), and consumers backfill what they lack from the exchange."""

    def __init__(self, url: str, prefix: str, journal_dir: Path, durable_seq: int = 0, *,
                 maxlen: int = 100_000, chunk_entries: int = CHUNK_ENTRIES, poll_s: float = 1.0,
                 interval_s: float = 0.005,
                 backoff_max_s: float = 5.0, redis_factory: Callable[[str], Any] | None = None,
                 fence: tuple[str, str] | None = None, wait_replicas: int = 0) -> None:
        self.url = url
        # a batch counts as replicated once this many Redis replicas have it too (WAIT after each send)
        self.wait_replicas = wait_replicas
        self.on_replicas = 0  # the last seq the replicas acknowledged
        self.replica_waits = 0  # WAITs that timed out (a replica down or behind)
        # (lease key, token): a leader's appends go through only while it holds the lease
        # (exchange.lease); refused once, the publisher is deposed and sends nothing more
        self.fence = fence
        self.deposed = ""
        self.on_deposed: Callable[[str], None] | None = None
        self._waiters: list[tuple[int, asyncio.Future]] = []  # replicated(seq) calls, by seq
        self.prefix = prefix
        self.key = stream_key(prefix)
        self.reader = JournalReader(journal_dir)
        self.durable = durable_seq  # the last journal seq known durable (fsynced)
        self.start_seq = durable_seq  # an empty stream at start: publish from here on
        self.maxlen = maxlen
        self.chunk_entries = chunk_entries
        self.poll_s = poll_s
        # at most one send per interval_s (unless a whole chunk waits): under load several batches
        # go in one XADD, which is what keeps publishing cheap; it adds at most this to the latency
        self.interval_s = interval_s
        self.backoff_max_s = backoff_max_s
        self._factory = redis_factory
        self.cursor: int | None = None  # the last seq in the stream (None: not known yet)
        self.expect = 0  # the last id's seq the stream is expected to end with (0: empty)
        self._xadd_after: Any = None
        self._redis: Any = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.connected = False
        self.foreign = ""  # why the stream cannot be this journal's, if it cannot
        self.errors = 0
        self.last_error = ""
        self.down_since: float | None = None
        self.sent_entries = 0  # journal entries sent
        self.sent_chunks = 0
        self.refused = 0  # chunks Redis already had (a re-send)
        self.published_at = 0.0  # monotonic time of the last XADD that went through
        self.publish_seconds = 0.0  # time spent reading the journal and sending (CPU and waits)

    # ------------------------------------------------------------------ lifetime
    async def start(self) -> None:
        """Start publishing in the background (Redis need not be up: it is retried)."""
        self._task = supervise(asyncio.create_task(self._run(), name="journal-publisher"), "the journal publisher",
                               lambda: self._closing)

    def wake(self, durable_seq: int) -> None:
        """A batch up to ``durable_seq`` is durable: publish it."""
        if durable_seq > self.durable:
            self.durable = durable_seq
        self._wake.set()

    async def replicated(self, seq: int) -> None:
        """Return once the stream holds journal seq ``seq`` (a leader with a lease answers a batch only
        then); raises exchange.lease.Deposed if the stream refused this publisher's appends."""
        from exchange.lease import Deposed

        if self.deposed:
            raise Deposed(self.deposed)
        self.wake(seq)
        if self.cursor is not None and self.cursor >= seq:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        await fut

    def _release_waiters(self) -> None:
        from exchange.lease import Deposed

        if not self._waiters:
            return
        cursor = self.cursor or 0
        if self.wait_replicas:
            cursor = min(cursor, self.on_replicas)
        keep = []
        for seq, fut in self._waiters:
            if fut.done():
                continue
            if self.deposed:
                fut.set_exception(Deposed(self.deposed))
            elif seq <= cursor:
                fut.set_result(None)
            else:
                keep.append((seq, fut))
        self._waiters = keep

    def depose(self, why: str) -> None:
        """Send nothing more: another core leads (its lease, exchange.lease)."""
        first = not self.deposed
        if first:
            self.deposed = why
            log.error("journal publisher: %s; sending nothing more", why)
        self._release_waiters()
        if first and self.on_deposed is not None:
            self.on_deposed(why)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything durable is in the stream (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.cursor is None or self.cursor < self.durable:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        if self._task is not None:
            if self.connected and not self.deposed and not self.foreign:
                await self.flush(timeout=5.0)
            self._closing = True
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionError("the journal publisher stopped before the batch was in Redis"))
        self._waiters = []
        self.reader.close()
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    # ------------------------------------------------------------------ the loop
    async def _connect(self) -> None:
        if self._redis is None:
            if self._factory is not None:
                self._redis = self._factory(self.url)
            else:
                import redis.asyncio as aioredis

                self._redis = aioredis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)
            self._xadd_after = self._redis.register_script(_XADD_AFTER)
        last = await self._top()
        if last is None:
            if self.cursor is None:
                self.cursor = self.start_seq
                log.info("journal stream %s is empty: publishing from journal seq %d on", self.key, self.cursor + 1)
            else:
                log.warning("journal stream %s is empty (a new or wiped Redis): going on after seq %d; "
                            "consumers backfill what they lack from the exchange", self.key, self.cursor)
        elif last > self.durable and (self.cursor is None or last > self.cursor):
            # ids beyond this exchange's journal: the stream is another journal's (a new data directory
            # over an old Redis prefix).  Sending after it would mix the two: refuse, and say so.
            self.foreign = (f"the stream {self.key} ends at journal seq {last}, beyond this exchange's journal "
                            f"(seq {self.durable}): it holds another journal; use another redis_prefix or delete "
                            "the stream")
            log.error("%s; not publishing", self.foreign)
            if self.fence is not None:  # a leader behind the stream: another core led after it
                self.depose(self.foreign)
            self.cursor = last
        else:
            if self.cursor is not None and last < self.cursor:
                log.warning("journal stream %s ends at seq %d, before seq %d sent earlier (Redis lost its latest "
                            "writes): sending again from seq %d", self.key, last, self.cursor, last + 1)
            self.cursor = last  # (beyond ours, up to our journal's end: another publisher sent those)
        self.expect = last or 0  # where the stream ends now (what the next XADD expects)
        self.connected = True
        self._release_waiters()
        if self.down_since is not None:
            log.warning("Redis reachable again after %.1f s: publishing from seq %d",
                        time.monotonic() - self.down_since, (self.cursor or 0) + 1)
        self.down_since = None

    def _moved(self, top: int) -> None:
        """The stream does not end at ``expect``: Redis lost writes, restarted empty, or another
        publisher wrote."""
        cursor = self.cursor or 0
        if top == 0:
            log.warning("journal stream %s is empty (Redis restarted empty or was wiped): going on after seq %d; "
                        "consumers backfill what they lack from the exchange", self.key, cursor)
            self.expect = 0
        elif top < cursor:
            log.warning("journal stream %s ends at seq %d, before seq %d sent earlier (Redis lost its latest writes): "
                        "sending again from seq %d", self.key, top, cursor, top + 1)
            self.cursor = self.expect = top
        elif top > self.durable:
            self.foreign = (f"the stream {self.key} ends at journal seq {top}, beyond this exchange's journal "
                            f"(seq {self.durable}): it holds another journal; use another redis_prefix or delete "
                            "the stream")
            log.error("%s; not publishing", self.foreign)
            if self.fence is not None:  # a leader behind the stream: another core led after it
                self.depose(self.foreign)
        else:  # another publisher (or a re-send) got there first: on from the stream's end
            self.refused += 1
            self.cursor = self.expect = top
            self._release_waiters()

    async def _top(self) -> int | None:
        got = await self._redis.xrevrange(self.key, count=1)
        return id_seq(got[0][0]) if got else None

    async def _run(self) -> None:
        import redis as redis_lib

        backoff = 0.1
        loop = asyncio.get_running_loop()
        while not self._closing and not self.deposed:
            try:
                if not self.connected:
                    await self._connect()
                while self.cursor is not None and self.cursor < self.durable and not self.foreign and not self.deposed:
                    wait = self.published_at + self.interval_s - time.monotonic()
                    if wait > 0 and self.durable - self.cursor < self.chunk_entries:
                        await asyncio.sleep(wait)
                    t0 = time.perf_counter()
                    await self._send_some(loop)
                    self.publish_seconds += time.perf_counter() - t0
                backoff = 0.1
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.poll_s):  # (no task per wait, as wait_for makes)
                        await self._wake.wait()
                except TimeoutError:  # idle: does the stream still end where we left it?
                    if self.connected and not self.foreign:
                        top = await self._top()
                        if (top or 0) != self.expect:
                            self._moved(top or 0)
            except asyncio.CancelledError:
                raise
            except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError) as e:
                self.errors += 1
                self.last_error = repr(e)
                if self.connected or self.down_since is None:
                    log.error("Redis unreachable (%s): publishing paused at seq %s, retrying with backoff",
                              e, self.cursor)
                    self.down_since = time.monotonic()
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            except Exception as e:  # noqa: BLE001 - a bug or a damaged journal: report, retry
                self.errors += 1
                self.last_error = repr(e)
                log.exception("journal publisher: could not publish after seq %s", self.cursor)
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)

    async def _send_some(self, loop: asyncio.AbstractEventLoop) -> None:
        """Up to a few chunks from the cursor."""
        assert self.cursor is not None
        cursor, upto = self.cursor, self.durable
        chunks: list[tuple[int, int, bytes]] = []
        if upto - cursor <= self.chunk_entries:  # the usual case, a batch or a few: read right here
            payloads = self.reader.read(cursor, self.chunk_entries, upto)
            if payloads:
                chunks.append((cursor + 1, cursor + len(payloads), encode_chunk(cursor + 1, payloads)))
        else:  # catching up: read in a thread, several chunks per round trip
            def read_many() -> list[tuple[int, int, bytes]]:
                out, at = [], cursor
                while at < upto and len(out) < 8:
                    p = self.reader.read(at, self.chunk_entries, upto)
                    if not p:
                        break
                    out.append((at + 1, at + len(p), encode_chunk(at + 1, p)))
                    at += len(p)
                return out

            chunks = await loop.run_in_executor(None, read_many)
        if not chunks:
            raise JournalError(f"the journal holds nothing after seq {cursor} although seq {upto} is durable")
        for first, last, blob in chunks:  # (one round trip each: a catch-up has a few)
            # XADD only if the stream still ends where we left it: a Redis that restarted without
            # its latest writes (or empty), or another writer, is found at the next send even if
            # redis-py reconnected silently
            fence_key, token = self.fence or ("", "")
            ok, top = await self._xadd_after(keys=[self.key, fence_key or self.key],
                                             args=[self.expect, self.maxlen, stream_id(last), blob, token])
            if ok == -1:
                self.depose(f"the stream refused journal seq {first} to {last}: the leader's lease {fence_key} "
                            f"is no longer {token}")
                return
            if not ok:
                self._moved(int(top))
                return
            self.cursor = self.expect = last
            self.sent_entries += last - first + 1
            self.sent_chunks += 1
            self._release_waiters()
        if self.wait_replicas and self.cursor is not None and self.cursor > self.on_replicas:
            await self._wait_replicas(self.cursor)
        self.published_at = time.monotonic()

    async def _wait_replicas(self, seq: int) -> None:
        """Until ``wait_replicas`` Redis replicas have everything sent up to ``seq`` (WAIT)."""
        while not self._closing:
            got = await self._redis.wait(self.wait_replicas, 1000)
            if got >= self.wait_replicas:
                break
            self.replica_waits += 1
            if self.replica_waits == 1 or self.replica_waits % 10 == 0:
                log.warning("%d of %d Redis replicas acknowledged journal seq %d; answers wait for them",
                            got, self.wait_replicas, seq)
        self.on_replicas = seq
        self._release_waiters()

    # ------------------------------------------------------------------ reporting
    def health(self) -> str:
        """"ok" while publishing works; else why not (the task died, Redis unreachable, deposed)."""
        if self.deposed:
            return f"deposed: {self.deposed}"
        if self._task is not None and self._task.done() and not self._closing and not self.deposed:
            exc = None if self._task.cancelled() else self._task.exception()
            return f"the journal publisher stopped: {exc!r}"
        if self.foreign:
            return self.foreign
        if self.down_since is not None:
            return (f"Redis unreachable for {time.monotonic() - self.down_since:.0f} s ({self.last_error}); "
                    f"publishing resumes from seq {(self.cursor or 0) + 1} when it is back")
        return "ok"

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        cursor = self.cursor or 0
        return [
            ("gpux_redis_published_seq", cursor, "last journal seq in the Redis stream", "gauge"),
            ("gpux_redis_publish_lag_seq", max(0, self.durable - cursor),
             "durable journal entries not yet in the Redis stream", "gauge"),
            ("gpux_redis_published_entries_total", self.sent_entries, "journal entries sent to Redis", "counter"),
            ("gpux_redis_published_chunks_total", self.sent_chunks, "stream entries (chunks) sent to Redis",
             "counter"),
            ("gpux_redis_refused_chunks_total", self.refused, "chunks Redis already had (re-sends refused)",
             "counter"),
            ("gpux_redis_publish_errors_total", self.errors, "errors publishing (Redis unreachable, ...)",
             "counter"),
            ("gpux_redis_replica_waits_total", self.replica_waits,
             "WAITs for the Redis replicas that timed out (answers waited)", "counter"),
            ("gpux_redis_publish_seconds_total", round(self.publish_seconds, 6),
             "time spent reading the journal and sending it to Redis", "counter"),
            ("gpux_redis_publisher_healthy", int(self.health() == "ok"), "0 while the publisher cannot publish",
             "gauge")]


# ---------------------------------------------------------------------- backfill sources
class JournalSource(Protocol):
    """Where a gap is backfilled from: ``fetch(after, limit)`` -> the payloads of seqs after ``after``."""

    name: str

    def fetch(self, after: int, limit: int) -> list[bytes]: ...


class FileJournal:
    """The journal files of an exchange on the same machine (``gpux settle --journal DIR``)."""

    def __init__(self, directory: str | Path) -> None:
        self.reader = JournalReader(directory)
        self.name = f"the journal files in {directory}"

    def fetch(self, after: int, limit: int) -> list[bytes]:
        return self.reader.read(after, limit)


class HttpJournal:
    """The exchange's journal-tail endpoint, ``GET /v1/admin/journal?after=SEQ&limit=N`` (an admin
    key signs it: ``headers(method, path)`` gives the GPUX-* headers, `gateway.auth.Signer.headers`)."""

    def __init__(self, url: str, headers: Callable[[str, str], dict[str, str]], timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.headers = headers
        self.timeout = timeout
        self.name = f"{self.url}/v1/admin/journal"

    def fetch(self, after: int, limit: int) -> list[bytes]:
        path = f"/v1/admin/journal?after={after}&limit={limit}"
        req = urllib.request.Request(self.url + path, headers=self.headers("GET", path))
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                blob = resp.read()
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")[:500]
            raise BackfillError(f"{self.name} answered {e.code}: {body}") from None
        if not blob:
            return []
        first, payloads = decode_chunk(blob)
        if first != after + 1:
            raise BackfillError(f"{self.name} answered entries from seq {first}, not {after + 1}")
        return payloads


class BackfillError(RuntimeError):
    """A gap that could not be backfilled (no source, or the source failed)."""
