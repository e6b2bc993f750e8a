"""Traffic for tests that put a real server under pressure, over raw sockets to 127.0.0.1.

- `LoadLoop`: N concurrent clients sending requests back to back (keep-alive or not), each
  request recorded as an `Outcome`: when it was sent, its status, its latency, or its error.
- `SlowHeaderClients`: connections that send one header line every few seconds and never end
  the head; each is reopened when the server closes it, and every closing is recorded.
- `IdleKeepAlive`: connections that made one request and then sit idle, kept open.
- `ProbeSampler`: a probe at a fixed rate on a new connection each time with a 1 s timeout, as
  Kubernetes and load balancers probe.

The many-connection helpers run an asyncio loop in one thread of their own: hundreds of clients
cost one thread, so the test process does not starve its own probe samplers of the GIL. Every
helper is bounded: requests have a timeout, `stop` waits for what is in flight and no longer.
Times are `time.monotonic()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import h11

HOST = "127.0.0.1"
MAX_HEAD_BYTES = 65536


# ------------------------------------------------------------------------------ HTTP/1.1


def build_request(
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    keep_alive: bool = True,
    host: str = HOST,
) -> bytes:
    """A request head (no body) as bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class Response:
    """One parsed HTTP response. Header names are lower-case; repeated ones are joined."""

    version: str
    status: int
    headers: dict[str, str]
    body: bytes
    reason: str = ""

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def keep_alive(self) -> bool:
        """Whether the server keeps the connection open after this response."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    def json(self) -> Any:
        return json.loads(self.body)

    def document(self) -> Any:
        """The JSON body, or None when the body is not JSON."""
        try:
            return self.json()
        except ValueError:
            return None


class ResponseParser:
    """Incremental parser of one response (h11): `feed` bytes until it returns the `Response`.

    h11 frames the body (Content-Length, chunked, or the end of the connection: `finish`). Any
    malformed or cut-off response raises ValueError. Nothing here pipelines.
    """

    def __init__(self, head_request: bool = False) -> None:
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        # h11 frames a response by the request it answers: tell it which one was sent.
        method = "HEAD" if head_request else "GET"
        self._h11.send(h11.Request(method=method, target="/", headers=[("Host", HOST)]))
        self._h11.send(h11.EndOfMessage())
        self._head: h11.Response | None = None
        self._body = bytearray()
        self._received = False

    def feed(self, data: bytes) -> Response | None:
        """Bytes received; the response once it is complete, else None."""
        if data:
            self._received = True
            self._h11.receive_data(data)
        return self._next()

    def finish(self) -> Response:
        """The connection ended: the response if it is complete, else ValueError."""
        if not self._received:
            raise ValueError("connection closed before a response")
        self._h11.receive_data(b"")
        response = self._next()
        if response is None:
            raise ValueError("connection closed before a complete response")
        return response

    def _next(self) -> Response | None:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as error:
                raise ValueError(f"bad or incomplete HTTP response: {error}") from None
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Response):
                self._head = event
            elif isinstance(event, h11.Data):
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage) and self._head is not None:
                return _response(self._head, bytes(self._body))


def _response(head: h11.Response, body: bytes) -> Response:
    headers: dict[str, str] = {}
    for raw_name, raw_value in head.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Response(
        version=f"HTTP/{head.http_version.decode()}",
        status=head.status_code,
        headers=headers,
        body=body,
        reason=head.reason.decode("latin-1"),
    )


def exchange(
    port: int, raw: bytes, timeout: float = 5.0, host: str = HOST, head_request: bool = False
) -> Response:
    """Send `raw` on a new connection and read one response (blocking, bounded by `timeout`).

    For requests that the server must answer itself: malformed ones, probes.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(raw)
        parser = ResponseParser(head_request)
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""  # a reset after the answer still leaves the answer readable
            if not data:
                return parser.finish()
            response = parser.feed(data)
            if response is not None:
                return response


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> Response:
    parser = ResponseParser(head_request)
    while True:
        data = await reader.read(65536)
        if not data:
            return parser.finish()
        response = parser.feed(data)
        if response is not None:
            return response


# ------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True)
class Outcome:
    """One request: sent at `sent` (monotonic, connecting included), done `latency` s later.

    `status` is None when no response came (`error` says why: refused, reset, timeout...).
    `document` is the parsed JSON body of an error response (status >= 400), or of every
    response when the helper keeps bodies (probe samplers do).
    """

    client: int
    path: str
    sent: float
    latency: float
    status: int | None
    error: str = ""
    media_type: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    document: Any = None

    @property
    def done(self) -> float:
        return self.sent + self.latency

    @property
    def code(self) -> str | None:
        """`error.code` of a JSON error body, if any."""
        if isinstance(self.document, dict) and isinstance(self.document.get("error"), dict):
            return self.document["error"].get("code")
        return None

    def describe(self) -> str:
        what = f"{self.status}" if self.status is not None else f"no answer ({self.error})"
        extra = f" {self.code}" if self.code else ""
        return f"{self.path} at {self.sent:.3f}: {what}{extra} after {self.latency:.3f}s"


def outcome_of(client: int, path: str, sent: float, response: Response, keep_body: bool) -> Outcome:
    return Outcome(
        client=client,
        path=path,
        sent=sent,
        latency=time.monotonic() - sent,
        status=response.status,
        media_type=response.media_type,
        headers=response.headers,
        document=response.document() if keep_body or response.status >= 400 else None,
    )


def failed(client: int, path: str, sent: float, error: BaseException | str) -> Outcome:
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
    return Outcome(client, path, sent, time.monotonic() - sent, None, reason)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` 0.99 = p99) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def sent_between(outcomes: Sequence[Outcome], start: float, end: float = math.inf) -> list[Outcome]:
    return [o for o in outcomes if start <= o.sent < end]


# ------------------------------------------------------------------------------ the loop


class _AsyncRunner:
    """Runs one coroutine in an asyncio loop on a thread of its own; `stop` is cooperative."""

    name = "traffic"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None
        self.started_at = math.nan
        self.stopped_at = math.nan

    async def _main(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:
            self._crash = error

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> Self:
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float) -> None:
        """Ask every client to finish, and wait at most `timeout` s; raise if one is stuck."""
        self.stopped_at = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"{self.name} did not stop within {timeout:.1f}s")
        if self._crash is not None:
            raise RuntimeError(f"{self.name} crashed") from self._crash

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < end:
            await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(OSError):  # TimeoutError included
        await asyncio.wait_for(writer.wait_closed(), 1.0)


class LoadLoop(_AsyncRunner):
    """`clients` concurrent clients, each sending requests back to back until stopped.

    Each client cycles through `paths` (offset by its index, so a mix spreads evenly). With
    `keep_alive` a client reuses its connection until the server says `Connection: close` or
    closes it; otherwise it opens one per request. A request that gets no complete response
    within `timeout` s (connecting included) is recorded as an error, and the client reconnects.
    """

    name = "load"

    def __init__(
        self,
        port: int,
        paths: Sequence[str],
        *,
        clients: int,
        headers: Mapping[str, str] | None = None,
        keep_alive: bool = True,
        timeout: float = 10.0,
        pause: float = 0.0,
        host: str = HOST,
    ) -> None:
        super().__init__()
        self.port, self.host = port, host
        self.paths = list(paths)
        self.clients = clients
        self.headers = dict(headers or {})
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.pause = pause
        self.outcomes: list[Outcome] = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop(self.timeout + 5)

    async def _main(self) -> None:
        await asyncio.gather(*(self._client(index) for index in range(self.clients)))

    async def _client(self, index: int) -> None:
        requests = [
            (path, build_request(path, headers=self.headers, keep_alive=self.keep_alive))
            for path in self.paths
        ]
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        turn = index
        while not self.stopping:
            path, raw = requests[turn % len(requests)]
            turn += 1
            sent = time.monotonic()
            try:
                response = await asyncio.wait_for(self._exchange(raw, reader, writer), self.timeout)
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as e:
                error = "timeout" if isinstance(e, TimeoutError) else e
                self.outcomes.append(failed(index, path, sent, error))
                await _close(writer)
                reader = writer = None
                await self._sleep_unless_stopped(0.05)  # refused: do not spin
                continue
            response, reader, writer = response
            self.outcomes.append(outcome_of(index, path, sent, response, keep_body=False))
            if not (self.keep_alive and response.keep_alive):
                await _close(writer)
                reader = writer = None
            if self.pause:
                await self._sleep_unless_stopped(self.pause)
        await _close(writer)

    async def _exchange(
        self,
        raw: bytes,
        reader: asyncio.StreamReader | None,
        writer: asyncio.StreamWriter | None,
    ) -> tuple[Response, asyncio.StreamReader, asyncio.StreamWriter]:
        if reader is None or writer is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(raw)
        await writer.drain()
        return await read_response(reader), reader, writer

    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status is None]


# ------------------------------------------------------------------------------ slow clients


@dataclass
class SlowConnection:
    """One slow-header connection: when its first byte went out, when the server closed it.

    `closed` is None if it was still open when the clients stopped (`stopped` says when).
    `received` is whatever the server wrote before closing (an error response, or nothing).
    """

    slot: int
    first_byte: float
    lines_sent: int = 0
    closed: float | None = None
    stopped: float | None = None
    received: bytes = b""
    error: str = ""

    @property
    def held_s(self) -> float:
        """How long the server kept it open after its first byte (so far, if still open)."""
        end = self.closed if self.closed is not None else self.stopped
        assert end is not None, "still running"
        return end - self.first_byte


class SlowHeaderClients(_AsyncRunner):
    """`count` connections that send a request head one header line every `interval` s.

    A connection sends its request line and Host at once, then a header line every `interval`
    s, never the blank line that ends the head. When the server closes it (after an error
    response or not), the closing is recorded and the slot reconnects at once. Starts are
    spread over the first `interval` s. `connections` holds every connection ever opened.
    """

    name = "slow-headers"

    def __init__(
        self,
        port: int,
        count: int,
        *,
        interval: float = 2.0,
        path: str = "/api/health/live",
        host: str = HOST,
    ) -> None:
        super().__init__()
        self.port, self.host = port, host
        self.count = count
        self.interval = interval
        self.path = path
        self.connections: list[SlowConnection] = []
        self.connect_errors: list[str] = []
        self._opened = 0

    @property
    def open_now(self) -> int:
        """Connections currently open (for waiting until all are up)."""
        return self._opened

    async def _main(self) -> None:
        await asyncio.gather(*(self._slot(slot) for slot in range(self.count)))

    async def _slot(self, slot: int) -> None:
        await self._sleep_unless_stopped(self.interval * slot / self.count)
        while not self.stopping:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), 5.0
                )
            except (TimeoutError, OSError) as error:
                self.connect_errors.append(f"{time.monotonic():.3f} {error!r}")
                await self._sleep_unless_stopped(0.5)
                continue
            self._opened += 1
            try:
                await self._hold(slot, reader, writer)
            finally:
                self._opened -= 1
                await _close(writer)

    async def _hold(
        self, slot: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n".encode()
        connection = SlowConnection(slot, time.monotonic())
        self.connections.append(connection)
        received = asyncio.ensure_future(reader.read(65536))
        try:
            writer.write(head)
            next_line = connection.first_byte + self.interval
            while not self.stopping:
                wait = max(0.0, next_line - time.monotonic())
                done, _ = await asyncio.wait({received}, timeout=wait)
                if done:
                    data = received.result()
                    if not data:
                        connection.closed = time.monotonic()
                        return
                    connection.received += data  # an answer before the close: keep reading
                    received = asyncio.ensure_future(reader.read(65536))
                    continue
                if time.monotonic() >= next_line:
                    connection.lines_sent += 1
                    writer.write(f"X-Slow-{connection.lines_sent}: {slot}\r\n".encode())
                    await writer.drain()
                    next_line += self.interval
            connection.stopped = self.stopped_at  # open until the clients were told to stop
        except OSError as error:  # reset, broken pipe: the server closed it
            connection.closed = time.monotonic()
            connection.error = repr(error)
            with contextlib.suppress(OSError):  # TimeoutError included
                data = await asyncio.wait_for(received, 0.5)  # the answer, if it came
                connection.received += data
        finally:
            received.cancel()


# ------------------------------------------------------------------------------ idle clients


class IdleKeepAlive(_AsyncRunner):
    """`count` keep-alive connections that each made one request and then sit idle.

    `opened` counts those whose first request got a response that keeps the connection open;
    `open_errors` lists the others. `closed_while_idle` counts those the server closed while
    they sat idle (seen when stopping). `recheck()` sends one more request on every connection
    still open and returns the outcomes; then the connections are closed.
    """

    name = "idle-keepalive"

    def __init__(
        self,
        port: int,
        count: int,
        *,
        path: str = "/api/health/live",
        concurrency: int = 50,
        timeout: float = 5.0,
        host: str = HOST,
    ) -> None:
        super().__init__()
        self.port, self.host = port, host
        self.count = count
        self.path = path
        self.concurrency = concurrency
        self.timeout = timeout
        self.opened = 0
        self.open_errors: list[str] = []
        self.closed_while_idle = 0
        self._ready = threading.Event()
        self._recheck = threading.Event()
        self._rechecked: list[Outcome] = []
        self._raw = build_request(path)

    def wait_open(self, timeout: float) -> None:
        """Block until every connection has made its first request (or failed to)."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.opened} of {self.count} idle connections within {timeout}s")

    def recheck(self, timeout: float = 30.0) -> list[Outcome]:
        """One more request on each connection still open, then close all; their outcomes."""
        self._recheck.set()
        self.stop(timeout)
        return self._rechecked

    async def _main(self) -> None:
        gate = asyncio.Semaphore(self.concurrency)
        held = await asyncio.gather(*(self._open(index, gate) for index in range(self.count)))
        connections = [c for c in held if c is not None]
        self._ready.set()
        watchers = [asyncio.ensure_future(reader.read(1)) for reader, _ in connections]
        while not self.stopping:
            await asyncio.sleep(0.05)
        alive = []
        for index, ((reader, writer), watcher) in enumerate(
            zip(connections, watchers, strict=True)
        ):
            if watcher.done():
                self.closed_while_idle += 1
                await _close(writer)
            else:
                watcher.cancel()
                alive.append((index, reader, writer))
        if self._recheck.is_set():
            self._rechecked = list(
                await asyncio.gather(*(self._again(i, r, w, gate) for i, r, w in alive))
            )
        for _, _, writer in alive:
            await _close(writer)

    async def _open(
        self, index: int, gate: asyncio.Semaphore
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        async with gate:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.timeout
                )
                writer.write(self._raw)
                response = await asyncio.wait_for(read_response(reader), self.timeout)
            except (TimeoutError, OSError, ValueError) as error:
                self.open_errors.append(f"{index}: {error!r}")
                await _close(writer)
                return None
            if response.status != 200 or not response.keep_alive:
                self.open_errors.append(f"{index}: {response.status} {response.headers}")
                await _close(writer)
                return None
            self.opened += 1
            return reader, writer

    async def _again(
        self,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        gate: asyncio.Semaphore,
    ) -> Outcome:
        async with gate:
            sent = time.monotonic()
            try:
                writer.write(self._raw)
                response = await asyncio.wait_for(read_response(reader), self.timeout)
            except (TimeoutError, OSError, ValueError) as error:
                return failed(index, self.path, sent, error)
            return outcome_of(index, self.path, sent, response, keep_body=False)


# ------------------------------------------------------------------------------ probes


class ProbeSampler:
    """GET `path` at a fixed rate, each on a new connection, with a `timeout` (1 s) limit.

    Probes start at fixed moments (`rate` per second); one that is late does not cause a
    burst: the next starts at the next free moment. A probe not answered within `timeout`
    is an error outcome, as Kubernetes would count it.
    """

    def __init__(
        self,
        port: int,
        path: str,
        *,
        rate: float = 10.0,
        timeout: float = 1.0,
        headers: Mapping[str, str] | None = None,
        host: str = HOST,
    ) -> None:
        self.port, self.host, self.path = port, host, path
        self.period = 1.0 / rate
        self.timeout = timeout
        self.raw = build_request(path, headers=headers)
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe {path}", daemon=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 2)
        if self._thread.is_alive():
            raise RuntimeError(f"probe sampler of {self.path} did not stop")

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            sent = time.monotonic()
            self.outcomes.append(self.probe(sent))
            next_at += self.period
            now = time.monotonic()
            if next_at < now:  # late: skip the missed moments, no burst
                next_at += math.ceil((now - next_at) / self.period) * self.period
            self._stop.wait(next_at - now)

    def probe(self, sent: float) -> Outcome:
        try:
            response = exchange(self.port, self.raw, self.timeout, self.host)
        except (OSError, ValueError) as error:
            if isinstance(error, TimeoutError):
                error = f"no answer within {self.timeout}s"
            return failed(0, self.path, sent, error)
        return outcome_of(0, self.path, sent, response, keep_body=True)

    def answered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status is not None]

    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status is None]
