"""The query cache's L1: a thread-safe LRU map with per-entry expiry and bounds on entries and bytes, at least as
fast as ``cachetools.LRUCache`` (which has no TTL, no byte bound and no lock; see ``benchmarks/cache.py``).

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
from collections.abc import Callable
from typing import Any, Final


#: An L1 entry, a plain tuple (indexing an exact tuple is the fastest field access Python has): the value, its size
#: in bytes (as charged against the bound) and when it expires (the LRU's clock) — all the LRU reads, and all that
#: :meth:`LRUCache.put` stores — then, in the query cache's entries (``put_entry``), when it was made and the scope
#: and generation limits it is valid for (per scope: the highest generation it reflects).
CacheEntry = tuple[Any, ...]
# Its fields (Final literals: a type checker knows each field's type).
VALUE: Final = 0
SIZE: Final = 1
EXPIRES_AT: Final = 2
CREATED_AT: Final = 3
SCOPE: Final = 4
LIMITS: Final = 5


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


class LRUCache:
    """A thread-safe LRU map with per-entry expiry and bounds on entries and bytes; get, put and evict are O(1): an
    ``OrderedDict`` whose entries move to the end on use and are popped from the front to evict.

    - Thread safety: whatever adds or removes entries (and so moves the byte count) holds the lock. A hit takes
      none: its lookup and its ``move_to_end`` are single C calls on the ``OrderedDict``, each atomic under the
      GIL; an entry removed between the two was still there when it was looked up (a hit), and its move is skipped.
    - Time: with the default clock, expiry is checked against :func:`coarse_clock` (an entry lives at most
      :data:`CLOCK_RESOLUTION_S` past its TTL) and no hit or put calls a clock; a clock given to the cache (a
      test's) is called on every hit and put.
    - Bytes: a put states the entry's size; it is added on put and subtracted on removal, never computed.
    - The operations are closures made once per cache, over the map, its bound methods, the clock, the bounds
      and the counters: a hit or a put then looks up no attribute but its entry's (each attribute lookup or
      method call saved is a few per cent of a hit; see ``benchmarks/cache.py``). ``max_entries`` and
      ``max_bytes`` are fixed at creation.
    """

    get: Callable[[str], Any]
    """The value stored under a key, ``None`` when absent or expired (an expired entry is removed)."""
    get_entry: Callable[[str], CacheEntry | None]
    put: Callable[..., None]
    """``put(key, value, *, size, ttl)``: store (or replace) an entry, evicting least recently used ones until both
    bounds hold; one larger than ``max_bytes`` is not stored."""
    put_entry: Callable[[str, CacheEntry], None]
    pop: Callable[[str], None]
    """Remove a key if present."""
    clear: Callable[[], None]
    _counts: Callable[[], tuple[int, int, int]]

    def __init__(self, max_entries: int, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        now = coarse_clock() if clock is time.monotonic else _Polled(clock)
        self._bind(self._data, self._lock, now, max_entries, max_bytes)

    def _bind(self, data: OrderedDict[str, CacheEntry], lock: threading.Lock, now: list[float] | _Polled,
              max_entries: int, max_bytes: int) -> None:
        touch, remove, insert, popitem = data.move_to_end, data.pop, data.setdefault, data.popitem
        # acquire/release in try/finally: the same guarantee as ``with lock``, at half its cost per call.
        acquire, release = lock.acquire, lock.release
        nbytes = evictions = expirations = 0
        refuse = max_entries <= 0

        def expire(key: str, entry: CacheEntry) -> None:
            nonlocal nbytes, expirations
            acquire()
            try:
                if data.get(key) is entry:
                    del data[key]
                    nbytes -= entry[1]
                    expirations += 1
            finally:
                release()

        def get_entry(key: str) -> CacheEntry | None:
            try:
                entry = data[key]  # a subscript, not .get(): no method call on a hit
            except KeyError:
                return None
            if entry[2] <= now[0]:  # EXPIRES_AT (literal indices: a global lookup per field costs)
                expire(key, entry)
                return None
            try:
                touch(key)
            except KeyError:
                pass  # removed by another thread since the lookup
            return entry

        def get(key: str) -> Any:  # get_entry's body again: a nested call would cost more than the rest
            try:
                entry = data[key]
            except KeyError:
                return None
            if entry[2] <= now[0]:
                expire(key, entry)
                return None
            try:
                touch(key)
            except KeyError:
                pass
            return entry[0]

        def put_entry(key: str, entry: CacheEntry) -> None:
            nonlocal nbytes, evictions
            size = entry[1]
            if size > max_bytes or refuse:
                return  # larger than the whole cache: not worth evicting everything for
            acquire()
            try:
                old = insert(key, entry)  # a new key is added at the end; a present one is returned
                if old is entry:
                    nbytes += size
                else:
                    del data[key]
                    data[key] = entry
                    nbytes += size - old[1]
                while len(data) > max_entries or nbytes > max_bytes:
                    _, old = popitem(False)
                    nbytes -= old[1]
                    evictions += 1
            finally:
                release()

        # Entries put in the same tick with the same TTL share one expiry float: a million entries then point to a
        # few hundred floats, not a million scattered ones (a cache miss per hit at that size, and 24 MB).
        last = [0.0, 0.0, 0.0]  # tick, ttl, expiry

        def put(key: str, value: Any, *, size: int, ttl: float) -> None:
            t = now[0]
            if t is last[0] and ttl == last[1]:
                expires = last[2]
            else:
                expires = t + ttl
                last[:] = t, ttl, expires
            put_entry(key, (value, size, expires))  # the fields the LRU reads: a smaller tuple, less memory

        def pop(key: str) -> None:
            nonlocal nbytes
            acquire()
            try:
                entry = remove(key, None)
                if entry is not None:
                    nbytes -= entry[1]
            finally:
                release()

        def clear() -> None:
            nonlocal nbytes
            acquire()
            try:
                data.clear()
                nbytes = 0
            finally:
                release()

        def counts() -> tuple[int, int, int]:
            return nbytes, evictions, expirations

        self.get_entry, self.get, self.put_entry, self.put = get_entry, get, put_entry, put
        self.pop, self.clear, self._counts = pop, clear, counts

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
