"""``FaultyProxy``: an HTTP/1.1 reverse proxy that injects registry faults, for the engine's failure tests.

It runs an asyncio server in its own thread on a free 127.0.0.1 port and forwards each request to an upstream
(a :class:`tests.support.registry.RegistryServer`) with httpx, keeping the client's ``Host`` header so the
registry's absolute ``Location`` URLs point back at the proxy. Each response ends with ``Connection: close``:
one request per connection keeps the proxy simple and makes truncation/stalls unambiguous.

Faults match requests by a regex searched in the request target (path + query) and optionally the method;
``times`` limits how many requests a fault hits (None = every one). The first matching live fault wins:

* ``refuse``   -- read the request, then close the connection without answering;
* ``status``   -- answer ``code`` with a registry-style JSON error body and extra ``headers`` (Retry-After...);
* ``stall``    -- forward the status, headers and the first ``after_bytes`` of the body, then hang until the
  client gives up (closes) or the proxy stops;
* ``truncate`` -- forward headers and ``after_bytes`` of the body, then close mid-body;
* ``corrupt``  -- forward the body with the byte at ``offset`` flipped (same length; an offset past the end of
  the body changes nothing, so pick one inside the blob);
* ``lie_size`` -- forward the body unchanged but advertise ``Content-Length`` plus ``delta`` (for HEAD: only the
  header lies; for GET with a positive delta, the connection closes short, as a lying server would).

``requests`` logs every request with the fault applied. :meth:`stop` cancels connection tasks, closes the
upstream client and joins the thread: nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Literal, Self

import httpx

__all__ = ["Fault", "FaultKind", "FaultyProxy", "LoggedRequest"]

FaultKind = Literal["refuse", "status", "stall", "truncate", "corrupt", "lie_size"]
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})
MAX_HEAD_BYTES = 64 * 1024
START_DEADLINE_S = 10.0


@dataclass
class Fault:
    kind: FaultKind
    path: str = ".*"
    method: str | None = None
    times: int | None = None  # remaining hits; None = unlimited
    code: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    after_bytes: int = 0
    offset: int = 0
    delta: int = 0
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return re.search(self.path, target) is not None


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    target: str  # path + query as the client sent it
    headers: Mapping[str, str]
    fault: FaultKind | None
    status: int | None  # what the client was told (None when refused)


class _BadRequest(Exception):
    pass


class FaultyProxy:
    """A fault-injecting reverse proxy in front of ``upstream_url`` (e.g. ``registry.url``)."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._port: int | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._upstream_client: httpx.AsyncClient | None = None
        self.errors: list[str] = []  # unexpected exceptions while serving (should stay empty)

    # -- addresses -------------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        if self._port is None:
            raise RuntimeError("faulty proxy is not running: call start() first")
        return f"127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- faults ----------------------------------------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        try:
            re.compile(fault.path)
        except re.error as err:
            raise ValueError(f"invalid fault path regex {fault.path!r}: {err}") from None
        with self._lock:
            self._faults.append(fault)
        return fault

    def refuse(self, path: str = ".*", *, times: int | None = None, method: str | None = None) -> Fault:
        return self.add(Fault("refuse", path, method, times))

    def status(self, code: int, path: str = ".*", *, times: int | None = None, method: str | None = None,
               headers: Mapping[str, str] | None = None) -> Fault:
        if not 100 <= code <= 599:
            raise ValueError(f"invalid HTTP status {code} for a status fault")
        return self.add(Fault("status", path, method, times, code=code, headers=dict(headers or {})))

    def stall(self, after_bytes: int = 0, path: str = ".*", *, times: int | None = None,
              method: str | None = None) -> Fault:
        return self.add(Fault("stall", path, method, times, after_bytes=after_bytes))

    def truncate(self, after_bytes: int, path: str = ".*", *, times: int | None = None,
                 method: str | None = None) -> Fault:
        return self.add(Fault("truncate", path, method, times, after_bytes=after_bytes))

    def corrupt(self, path: str = ".*", *, offset: int = 0, times: int | None = None,
                method: str | None = None) -> Fault:
        return self.add(Fault("corrupt", path, method, times, offset=offset))

    def lie_size(self, delta: int, path: str = ".*", *, times: int | None = None,
                 method: str | None = None) -> Fault:
        if delta == 0:
            raise ValueError("lie_size needs a non-zero delta")
        return self.add(Fault("lie_size", path, method, times, delta=delta))

    def clear(self) -> None:
        """Remove every fault (the request log is kept)."""
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def _take_fault(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, target):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"faulty proxy already running at {self.url}")
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._thread_main, name="faulty-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_DEADLINE_S):
            raise RuntimeError(f"faulty proxy did not start within {START_DEADLINE_S}s")
        error = self._startup_failure()
        if error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"faulty proxy failed to start: {error}")
        return self

    def _startup_failure(self) -> BaseException | None:
        """What the proxy thread reported while starting (read after ``_ready`` is set)."""
        return self._startup_error

    def stop(self) -> None:
        """Stop serving: cancel in-flight connections (stalled ones included), close upstream, join the thread."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            loop.call_soon_threadsafe(stop_event.set)
        thread.join()
        self._thread = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as err:  # report to start() instead of dying silently in the thread
            self._startup_error = err
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        try:
            server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
        except OSError as err:
            self._startup_error = err
            self._ready.set()
            return
        self._tasks.clear()
        self._port = server.sockets[0].getsockname()[1]
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), trust_env=False) as upstream:
            self._upstream_client = upstream
            self._ready.set()
            await self._stop_event.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    # -- per connection --------------------------------------------------------------------------------------

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A plain callback (not a coroutine) so the handler task is ours to track and cancel on stop."""
        handler = asyncio.ensure_future(self._handle(reader, writer))
        self._tasks.add(handler)
        handler.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, _BadRequest, httpx.HTTPError):
            pass  # the client or upstream went away mid-exchange: close this connection, nothing else to do
        except Exception as err:  # a proxy bug: keep serving, but make it visible to tests
            with self._lock:
                self.errors.append(f"{type(err).__name__}: {err}")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, target, headers = await _read_head(reader)
        body = await _read_body(reader, headers)
        fault = self._take_fault(method, target)
        kind = fault.kind if fault is not None else None

        if fault is not None and fault.kind == "refuse":
            self._record(LoggedRequest(method, target, headers, kind, None))
            return
        if fault is not None and fault.kind == "status":
            self._record(LoggedRequest(method, target, headers, kind, fault.code))
            error = (f'{{"errors":[{{"code":"INJECTED","message":"injected status {fault.code}",'
                     f'"detail":null}}]}}').encode()
            extra = {"Content-Type": "application/json", **fault.headers}
            await _write_head(writer, fault.code, extra, len(error))
            if method != "HEAD":
                writer.write(error)
            await writer.drain()
            return

        fwd_headers = [(k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP]
        upstream = self._upstream_client
        if upstream is None:
            return
        request = upstream.build_request(method, self.upstream_url + target, headers=fwd_headers,
                                               content=body)
        try:
            response = await upstream.send(request, stream=True)
        except httpx.TransportError as err:
            self._record(LoggedRequest(method, target, headers, kind, 502))
            msg = f'{{"errors":[{{"code":"UPSTREAM","message":"upstream unavailable: {type(err).__name__}"}}]}}'
            await _write_head(writer, 502, {"Content-Type": "application/json"}, len(msg))
            writer.write(msg.encode())
            await writer.drain()
            return
        try:
            await self._relay(method, target, headers, response, writer, reader, fault)
        finally:
            await response.aclose()

    async def _relay(self, method: str, target: str, headers: Mapping[str, str], response: httpx.Response,
                     writer: asyncio.StreamWriter, reader: asyncio.StreamReader, fault: Fault | None) -> None:
        kind = fault.kind if fault is not None else None
        self._record(LoggedRequest(method, target, headers, kind, response.status_code))
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
        length_text = response.headers.get("Content-Length")
        true_length = int(length_text) if length_text is not None else None
        out_headers.pop("content-length", None)
        advertised = true_length
        if fault is not None and fault.kind == "lie_size":
            advertised = (true_length or 0) + fault.delta
        await _write_head(writer, response.status_code, out_headers, advertised)
        if method == "HEAD":
            await writer.drain()
            return

        limit: int | None = None  # bytes of body to send before the fault acts
        if fault is not None and fault.kind in ("stall", "truncate"):
            limit = fault.after_bytes
        elif fault is not None and fault.kind == "lie_size" and advertised is not None:
            limit = max(advertised, 0)  # never send more than advertised; a short body is closed early
        sent = 0
        async for chunk in response.aiter_raw():
            if limit is not None:
                chunk = chunk[: max(limit - sent, 0)]
            if fault is not None and fault.kind == "corrupt" and sent <= fault.offset < sent + len(chunk):
                i = fault.offset - sent
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
            if chunk:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            if limit is not None and sent >= limit:
                break
        if fault is not None and fault.kind == "stall":
            await reader.read()  # returns b"" when the client closes; cancelled when the proxy stops


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest("request head too large") from None
    if len(raw) > MAX_HEAD_BYTES:
        raise _BadRequest("request head too large")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequest(f"malformed request line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
    return parts[0].upper(), parts[1], headers


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if (_header(headers, "transfer-encoding") or "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from our clients: the final CRLF
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = _header(headers, "content-length")
    return await reader.readexactly(int(length)) if length else b""


async def _write_head(writer: asyncio.StreamWriter, status: int, headers: Mapping[str, str],
                      content_length: int | None) -> None:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    lines.append("Connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
