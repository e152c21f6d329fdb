"""The query cache's L1: a thread-safe LRU map with per-entry expiry and bounds on entries and bytes, at least as
fast as ``cachetools.LRUCache`` on a hit (which has no TTL, no byte bound and no lock; see ``benchmarks/cache.py``).

Example::

    lru = LRUCache(max_entries=1000, max_bytes=1 << 20)
    lru.put("k", value, size=120, ttl=60)
    lru.get("k")
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from heapq import heapify, heappop, heappush
from collections.abc import Callable
from typing import Any


#: How stale the time an entry's expiry is checked against may be (s): an entry is dropped at most this long after its
#: TTL. Memcached does the same with a one-second clock.
CLOCK_RESOLUTION_S = 0.05

_coarse_now = [time.monotonic()]  # time.monotonic(), at most CLOCK_RESOLUTION_S old while the ticker runs
_ticker: threading.Thread | None = None
_ticker_lock = threading.Lock()


def _tick(now: list[float]) -> None:
    monotonic, sleep = time.monotonic, time.sleep
    while True:
        now[0] = monotonic()
        sleep(CLOCK_RESOLUTION_S)


def _start_ticker() -> None:
    global _ticker
    with _ticker_lock:
        if _ticker is None or not _ticker.is_alive():
            _coarse_now[0] = time.monotonic()
            _ticker = threading.Thread(target=_tick, args=(_coarse_now,), name="audit-cache-clock", daemon=True)
            _ticker.start()


def _restart_ticker_after_fork() -> None:
    global _ticker
    if _ticker is not None:  # the child has no threads: its caches' clock would stop
        _ticker = None
        _start_ticker()


os.register_at_fork(after_in_child=_restart_ticker_after_fork)


def coarse_clock() -> list[float]:
    """``coarse_clock()[0]``: ``time.monotonic()`` as of at most :data:`CLOCK_RESOLUTION_S` ago, kept by one daemon
    thread per process (started on first use, again in a forked child): an LRU hit reads a list item instead of
    calling the clock, which was a fifth of its cost."""
    if _ticker is None:
        _start_ticker()
    return _coarse_now


class _Polled:
    """``[0]`` calls the clock: how a cache given a clock of its own (a test's) reads it on every lookup."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    def __getitem__(self, _index: int) -> float:
        return self._clock()


_NEVER = float("inf")


class LRUCache:
    """A thread-safe LRU map with per-entry expiry and bounds on entries and bytes; get, put and evict are O(1): an
    ``OrderedDict`` of the values, which move to the end on use and are popped from the front to evict.

    - A hit reads the map and nothing else: the map holds the value itself (no per-entry record to follow — on a
      large cache each pointer followed is a cache miss), and its ``move_to_end`` is the same C lookup again.
    - Expiry: each entry has a record ``(key, size, due)`` in a side map, and sits in the bucket of its due time
      (its expiry rounded down to :data:`CLOCK_RESOLUTION_S`; exact with a clock of the cache's own). A hit only
      compares the clock with the earliest due bucket; once that time has come, the buckets due are swept under the
      lock before the lookup. So an entry is gone within :data:`CLOCK_RESOLUTION_S` of its TTL (at most that much
      early or late) and a hit never returns one past it. A record left in a bucket by an entry evicted or replaced
      since is skipped when its bucket is swept; the buckets are rebuilt from the live records once they hold more
      than twice ``max_entries`` records (amortized O(1) per put).
    - Thread safety: whatever adds or removes entries (and so moves the byte count) holds the lock. A hit takes
      none: its ``move_to_end`` and its lookup are single C calls, each atomic under the GIL; an entry removed
      between the two is a miss.
    - Time: with the default clock, expiry is checked against :func:`coarse_clock` and no hit or put calls a
      clock; a clock given to the cache (a test's) is called on every hit and put.
    - Bytes: a put states the entry's size; it is added on put and subtracted on removal, never computed.
    - The operations are closures made once per cache, over the maps, their bound methods, the clock, the bounds
      and the counters: a hit or a put then looks up no attribute (each attribute lookup or method call saved is a
      few per cent of a hit; see ``benchmarks/cache.py``). ``max_entries`` and ``max_bytes`` are fixed at
      creation.
    """

    get: Callable[[str], Any]
    """The value stored under a key, ``None`` when absent or expired (expired entries are removed)."""
    put: Callable[..., None]
    """``put(key, value, *, size, ttl)``: store (or replace) an entry, evicting least recently used ones until both
    bounds hold; one larger than ``max_bytes`` is not stored."""
    pop: Callable[[str], None]
    """Remove a key if present."""
    clear: Callable[[], None]
    _counts: Callable[[], tuple[int, int, int]]

    def __init__(self, max_entries: int, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._records: dict[str, tuple[str, int, float]] = {}  # key -> (key, size, due), the live entries'
        self._lock = threading.Lock()
        own_clock = clock is not time.monotonic
        now = _Polled(clock) if own_clock else coarse_clock()
        self._bind(now, 0.0 if own_clock else CLOCK_RESOLUTION_S)

    def _bind(self, now: list[float] | _Polled, resolution: float) -> None:
        data, records, max_entries, max_bytes = self._data, self._records, self.max_entries, self.max_bytes
        touch, popitem = data.move_to_end, data.popitem
        claim, forget = records.setdefault, records.pop
        # acquire/release in try/finally: the same guarantee as ``with lock``, at half its cost per call.
        acquire, release = self._lock.acquire, self._lock.release
        buckets: dict[float, list[tuple[str, int, float]]] = {}  # due time -> the records put with it
        dues: list[float] = []  # heap of the buckets' due times
        due = _NEVER  # the earliest of them: all a hit looks at
        bucketed = 0  # records in the buckets, live or not
        rebuild_at = 2 * max(max_entries, 0) + 1024
        nbytes = evictions = expirations = 0
        refuse = max_entries <= 0
        # Puts in one tick with one TTL share a due time and its bucket: no arithmetic, no lookup.
        last: list[Any] = [None, None, None, None]  # tick, ttl, due, bucket

        def sweep() -> None:
            nonlocal due, nbytes, expirations, bucketed
            acquire()
            try:
                t = now[0]
                while dues and dues[0] <= t:
                    d = heappop(dues)
                    if d == last[2]:
                        last[:] = None, None, None, None
                    for record in buckets.pop(d):
                        bucketed -= 1
                        key = record[0]
                        if records.get(key) is record:  # still this entry, not one put again since
                            del records[key], data[key]
                            nbytes -= record[1]
                            expirations += 1
                due = dues[0] if dues else _NEVER
            finally:
                release()

        def get(key: str) -> Any:
            if now[0] >= due:
                sweep()
            try:
                touch(key)
                return data[key]
            except KeyError:  # absent, or removed by another thread between the two
                return None

        def rebuild() -> None:
            nonlocal due, bucketed
            buckets.clear()
            for record in records.values():
                bucket = buckets.get(record[2])
                if bucket is None:
                    buckets[record[2]] = [record]
                else:
                    bucket.append(record)
            dues[:] = buckets
            heapify(dues)
            due = dues[0] if dues else _NEVER
            bucketed = len(records)
            last[:] = None, None, None, None

        def put(key: str, value: Any, *, size: int, ttl: float) -> None:
            nonlocal nbytes, evictions, due, bucketed
            if size > max_bytes or refuse:
                return  # larger than the whole cache: not worth evicting everything for
            t = now[0]
            acquire()
            try:
                if t is last[0] and ttl == last[1]:
                    record = (key, size, last[2])
                    last[3].append(record)
                else:
                    d = t + ttl
                    if resolution:
                        d -= d % resolution
                    record = (key, size, d)
                    bucket = buckets.get(d)
                    if bucket is None:
                        bucket = buckets[d] = [record]
                        heappush(dues, d)
                        if d < due:
                            due = d
                    else:
                        bucket.append(record)
                    last[:] = t, ttl, d, bucket
                bucketed += 1
                old = claim(key, record)  # a new key gets the record; a present one returns its own
                data[key] = value
                if old is not record:
                    records[key] = record
                    nbytes -= old[1]
                    touch(key)
                nbytes += size
                while len(data) > max_entries or nbytes > max_bytes:
                    nbytes -= forget(popitem(False)[0])[1]
                    evictions += 1
                if bucketed > rebuild_at:
                    rebuild()
            finally:
                release()

        def pop(key: str) -> None:
            nonlocal nbytes
            acquire()
            try:
                record = forget(key, None)
                if record is not None:
                    del data[key]
                    nbytes -= record[1]
            finally:
                release()

        def clear() -> None:
            nonlocal nbytes
            acquire()
            try:
                data.clear()
                records.clear()
                nbytes = 0
                rebuild()
            finally:
                release()

        def counts() -> tuple[int, int, int]:
            return nbytes, evictions, expirations

        self.get, self.put, self.pop, self.clear, self._counts = get, put, pop, clear, counts

    def __len__(self) -> int:
        return len(self._data)

    @property
    def bytes(self) -> int:
        """Bytes held (the sizes given on put)."""
        return self._counts()[0]

    @property
    def evictions(self) -> int:
        return self._counts()[1]

    @property
    def expirations(self) -> int:
        return self._counts()[2]
