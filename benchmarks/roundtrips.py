"""Counting network round trips: a TCP relay in front of a PostgreSQL server that counts how often a client waited
for the server.

A *round trip* is counted when the client asks for an answer while nothing it asked before is still unanswered,
and the server answers. The relay reads the PostgreSQL protocol on both sides. The client asks for an answer with a
``Sync`` (the end of an extended-protocol exchange), a simple ``Query``, a message of the startup and
authentication, or a ``Flush`` that follows messages the server has not answered; a ``Sync`` or ``Query`` stays
unanswered until the server's ``ReadyForQuery``. So a client that sends BEGIN, waits, sends a query, waits, sends
COMMIT, waits makes three; a pipeline of two statements and one ``Sync`` makes one — even when the client's writes
reach the server in pieces and the server answers the first statement before the rest arrives (the client never
waited for it), and even with a ``Flush`` the client adds while the answer is on its way or after it arrived. A
``Flush`` in the middle of a pipeline that the client then waits on counts as one. Messages the server sends unasked
(a NOTIFY, a parameter change) are not counted. A ``COPY … FROM STDIN`` counts as one (its data is sent while the
``Query`` that started it is unanswered). What crosses the wire decides, whatever the driver, pool or library above
it does.

A connection that negotiates TLS cannot be read: its round trips are then counted as every answer of the server
that follows data from the client.

Timing never goes through the relay (it adds its own latency to each round trip); it only counts.

Example::

    with RoundTripProxy(url) as proxy:
        with psycopg.connect(proxy.url, autocommit=True) as conn:
            before = proxy.round_trips
            conn.execute("SELECT 1").fetchall()
            assert proxy.round_trips - before == 1
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_HOST = "127.0.0.1"
#: Untyped requests of the start of a connection (their length, then this code), answered by one bare byte.
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104
_NEGOTIATE = (_SSL_REQUEST, _GSSENC_REQUEST)
#: Client messages that the server answers with ReadyForQuery, and those the client waits on (the password / SASL
#: messages of the authentication too); a Flush waits only when something was sent since the server last answered.
_ENDS_REQUEST = (ord("S"), ord("Q"))
_ASKS = (ord("S"), ord("Q"), ord("p"))
_FLUSH = ord("H")
_READY_FOR_QUERY = ord("Z")


class _Stream:
    """Splits one direction of a connection into protocol messages (type byte, or none before the startup)."""

    def __init__(self, *, untyped: bool) -> None:
        self.buffer = bytearray()
        self.untyped = untyped  # the client's startup messages carry no type byte
        self.bare_bytes = 0  # the server answers SSLRequest / GSSENCRequest with one byte

    def messages(self, data: bytes) -> list[tuple[int | None, bytes]]:
        self.buffer += data
        out: list[tuple[int | None, bytes]] = []
        while True:
            if self.bare_bytes:
                if not self.buffer:
                    return out
                out.append((None, bytes(self.buffer[:1])))
                del self.buffer[:1]
                self.bare_bytes -= 1
                continue
            head = 4 if self.untyped else 5
            if len(self.buffer) < head:
                return out
            if self.untyped:
                kind, (length,) = None, struct.unpack_from("!I", self.buffer, 0)
                size = length
            else:
                kind, (length,) = self.buffer[0], struct.unpack_from("!I", self.buffer, 1)
                size = length + 1
            if len(self.buffer) < size:
                return out
            out.append((kind, bytes(self.buffer[:size])))
            del self.buffer[:size]


class _Pair:
    """One relayed connection and its request state."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.open = True
        self.opaque = False  # TLS: the messages cannot be read
        self.from_client = _Stream(untyped=True)
        self.from_server = _Stream(untyped=False)
        self.unanswered = 0  # Sync / Query sent and not yet answered by ReadyForQuery
        self.waiting = False  # the client sent a request while idle; the server has not answered it yet
        self.unflushed = False  # the client sent messages since the server last sent anything

    def client_data(self, data: bytes) -> None:
        if self.opaque:
            self.waiting = True
            return
        asks = False
        idle = self.unanswered == 0
        for kind, body in self.from_client.messages(data):
            if kind is None:  # startup phase: every message waits for the server's answer
                asks = True
                code = struct.unpack_from("!I", body, 4)[0] if len(body) >= 8 else 0
                if code in _NEGOTIATE:
                    self.from_server.bare_bytes += 1
                elif code >> 16 == 3:  # StartupMessage (protocol 3.x): typed messages from now on
                    self.from_client.untyped = False
                continue
            if kind == _FLUSH:
                asks = asks or self.unflushed  # a Flush with nothing sent before it asks for nothing
            else:
                asks = asks or kind in _ASKS
                self.unflushed = True
            if kind in _ENDS_REQUEST:
                self.unanswered += 1
        if asks and idle:
            self.waiting = True

    def server_data(self, data: bytes) -> bool:
        """Whether this data answers a request the client is waiting for (a round trip)."""
        answered = self.waiting
        self.waiting = False
        self.unflushed = False
        if self.opaque:
            return answered
        for kind, body in self.from_server.messages(data):
            if kind is None and body in (b"S", b"G"):  # TLS / GSS encryption accepted: unreadable from now on
                self.opaque = True
                return answered
            if kind == _READY_FOR_QUERY and self.unanswered:
                self.unanswered -= 1
        return answered


class RoundTripProxy:
    """Relays TCP connections from a free port of 127.0.0.1 to the server of ``url`` (a ``postgresql://`` URL),
    counting round trips over all of them (:attr:`round_trips`). :attr:`url` is ``url`` pointed at the relay."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError("the URL names no host (a Unix socket cannot be relayed)")
        self._target = (parts.hostname, parts.port or 5432)
        self._listener = socket.create_server((_HOST, 0))
        self._listener.setblocking(False)
        port = self._listener.getsockname()[1]
        netloc = parts.netloc.rsplit("@", 1)
        address = f"{_HOST}:{port}"
        self.url = urlunsplit(parts._replace(netloc=f"{netloc[0]}@{address}" if len(netloc) == 2 else address))
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._trips = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="round-trip-proxy", daemon=True)

    @property
    def round_trips(self) -> int:
        with self._lock:
            return self._trips

    def __enter__(self) -> RoundTripProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                if key.data is None:
                    self._accept()
                else:
                    pair, from_client = key.data
                    self._relay(pair, from_client)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        client.setblocking(True)
        try:
            server = socket.create_connection(self._target, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server)
        self._selector.register(client, selectors.EVENT_READ, (pair, True))
        self._selector.register(server, selectors.EVENT_READ, (pair, False))

    def _relay(self, pair: _Pair, from_client: bool) -> None:
        source, sink = (pair.client, pair.server) if from_client else (pair.server, pair.client)
        try:
            data = source.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._close(pair)
            return
        # Read before forwarding: the answer cannot arrive before the question has been passed on.
        if from_client:
            pair.client_data(data)
        elif pair.server_data(data):
            with self._lock:
                self._trips += 1
        try:
            sink.sendall(data)
        except OSError:
            self._close(pair)

    def _close(self, pair: _Pair) -> None:
        if not pair.open:
            return
        pair.open = False
        for s in (pair.client, pair.server):
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
