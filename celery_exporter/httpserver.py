"""Serving a WSGI app with a bounded number of threads.

socketserver's ThreadingMixIn gives every connection a thread from accept on, without limit
and without a read timeout, so idle or half-open connections (a request head that never
ends) each hold a thread for as long as the client likes. Here:

* One serving loop (`Server.serve_forever`, run by the caller's thread) owns the listening
  socket and every connection whose request head is not complete yet; such a connection
  holds no thread, only a socket and a buffer. Over plain HTTP the loop reads (non-blocking)
  until the head is complete (a blank line), or the bytes cannot be HTTP (wsgiref answers
  400); over TLS it waits only for the first bytes and leaves the handshake and the head to
  the request's thread, with the time left.
* Every connection has an absolute deadline, `read_timeout` seconds from accept, to complete
  its head; past it it is closed, so a client that trickles bytes is closed too. A head over
  64 KiB is answered 431 and closed.
* A complete request is served in a thread of its own while fewer than `max_requests` are
  being served. Beyond that it is answered at once from the loop with 503 (Retry-After: 1),
  written without blocking; a TLS connection over the cap is closed. Refusals are logged as
  a WARNING when they start (again after a quiet minute), else at DEBUG, and reported to
  `on_refused` (the 431s too) for celery_exporter_http_requests_refused_total.
* With TLS, the context is asked for each new connection (so a reloaded certificate serves
  new clients), and `check_peer` may close a connection after its handshake
  (client_allowed_sans).
* The request's thread runs wsgiref's WSGIRequestHandler (so the app gets the environment
  wsgiref builds), reading the head the loop buffered and then the socket, with a socket
  timeout of `read_timeout` for the rest of the request and the response. No per-request
  log lines; a failed request (client gone or not reading, TLS handshake failed) is logged
  at DEBUG, an exception of the app at ERROR, both through logging.
* `shutdown()`, from another thread, wakes the loop through a socketpair, waits for it to
  end and closes the listening socket and every pending connection. Threads serving a
  request are daemons and finish on their own.
"""

from __future__ import annotations

import collections
import errno
import io
import logging
import re
import selectors
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Tuple, Union
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler

if TYPE_CHECKING:
    from _typeshed import OptExcInfo, WriteableBuffer
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
# How every HTTP request starts: a method (letters) and a space. Bytes that cannot start one
# (another protocol, e.g. a Redis client given this port) are handed to wsgiref at once, which
# answers 400, rather than left waiting for a blank line that never comes.
HTTP_START = re.compile(rb"[A-Z]{0,20}(?: |\Z)")
ACCEPT_BACKOFF = 0.1  # seconds without accepting after EMFILE and the like
QUIET = 60.0  # a repeated warning is logged again only after this long without one
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

# A peer's address as socket.accept() gives it: (host, port), plus flowinfo and scope_id for
# IPv6. Any: typeshed types it Any too (socket._RetAddress).
Address = Tuple[Any, ...]


Headers = Sequence[Tuple[str, str]]
# Why a request was refused, for Server's on_refused (celery_exporter_http_requests_refused_total)
REFUSED_BUSY = "max_requests"
REFUSED_HEAD_TOO_LARGE = "head_too_large"
REFUSED_CLIENT_CERTIFICATE = "client_certificate"


def _response(status: str, text: str, *headers: str, extra: Headers = ()) -> bytes:
    body = text.encode()
    head = [
        f"HTTP/1.0 {status}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        *headers,
        *(f"{name}: {value}" for name, value in extra),
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(head).encode() + body


def _busy(extra: Headers) -> bytes:
    return _response("503 Service Unavailable", "too many requests in progress; retry\n", "Retry-After: 1", extra=extra)


def _head_too_large(extra: Headers) -> bytes:
    return _response("431 Request Header Fields Too Large", "request head over 64 KiB\n", extra=extra)


class _RateLimitedLog:
    """WARNING for the first occurrence, DEBUG for repeats until QUIET seconds pass without one."""

    def __init__(self) -> None:
        self._last = -QUIET

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        level = logging.WARNING if now - self._last >= QUIET else logging.DEBUG
        self._last = now
        log.log(level, message, *args)


class _Connection:
    """An accepted connection whose request head is not complete yet."""

    __slots__ = ("sock", "address", "deadline", "head")

    def __init__(self, sock: socket.socket, address: Address, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline
        self.head = bytearray()


class _Replay(io.RawIOBase):
    """The bytes the loop already read, then the socket. Until the head is parsed
    (`deadline` set to None), every read gets only the time left before the deadline."""

    def __init__(self, head: bytes, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._sock = sock
        self.deadline: Optional[float] = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("request head not complete in time")
            self._sock.settimeout(left)
        return self._sock.recv_into(view)


class _ServerHandler(ServerHandler):
    """wsgiref's, with errors logged through logging rather than printed: the connection's
    (a client that stopped reading: a timeout) at DEBUG, the app's at ERROR."""

    request_handler: WSGIRequestHandler  # set by _Handler.handle, as wsgiref does
    environ: WSGIEnvironment  # set by BaseHandler.setup_environ

    def log_exception(self, exc_info: OptExcInfo) -> None:
        level = logging.DEBUG if isinstance(exc_info[1], OSError) else logging.ERROR
        log.log(level, "HTTP request for %s failed", self.environ.get("PATH_INFO"), exc_info=exc_info)


class _Handler(WSGIRequestHandler):
    """wsgiref's handler over the replayed head and the socket, without per-request logs."""

    rfile: io.BufferedReader
    wfile: io.BufferedWriter
    # wsgiref answers an unparsable request line as HTTP/0.9 by default: a body without a
    # status line or headers. Answer it as HTTP/1.0, with both (and the configured headers).
    default_request_version = "HTTP/1.0"

    def __init__(self, sock: socket.socket, address: Address, server: Server, head: bytes, deadline: float) -> None:
        self._app = server.app
        self._extra_headers = server.extra_headers
        self._sock = sock
        self._reader = _Replay(head, sock, deadline)
        self._read_timeout = server.read_timeout
        # wsgiref's handler only duck-types its server (it reads base_environ); typeshed asks
        # for a socketserver.BaseServer, which Server is not.
        wsgi_server: Any = server
        super().__init__(sock, address, wsgi_server)

    def setup(self) -> None:
        self.connection = self._sock
        self.rfile = io.BufferedReader(self._reader)
        self.wfile = self._sock.makefile("wb")

    def end_headers(self) -> None:
        """The configured headers on wsgiref's own answers too (400, 414, ...)."""
        for name, value in self._extra_headers():
            self.send_header(name, value)
        super().end_headers()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self._reader.deadline = None  # the head is read: from now on read_timeout per operation
        self._sock.settimeout(self._read_timeout)
        return parsed

    def handle(self) -> None:
        """WSGIRequestHandler.handle, with _ServerHandler."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return  # an error was answered
        handler = _ServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=False)
        handler.request_handler = self
        handler.run(self._app)

    # Any: the signature of BaseHTTPRequestHandler.log_message
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per request would drown the operator's logs


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # not connected any more
    sock.close()


class Server:
    """Serves `app` on `address` ((host, port); IPv6 when host contains ':') until shutdown().

    At most `max_requests` requests are served at once, each in its own thread; a connection
    has `read_timeout` seconds from accept to send its request head, and each read or write
    of the request's thread gets `read_timeout` too. With `ssl_context` (a context, or a
    function giving the one to use for each new connection), HTTPS; `check_peer` may turn a
    client away after the handshake (the reason, or None). `extra_headers` gives headers to
    add to the responses the server writes itself (the app adds its own); `on_refused` is
    called with REFUSED_* for every request refused. Binding happens here: a port in use
    raises OSError."""

    def __init__(
        self,
        address: Tuple[str, int],
        app: WSGIApplication,
        *,
        max_requests: int = 40,
        read_timeout: float = 10.0,
        ssl_context: Union[ssl.SSLContext, Callable[[], ssl.SSLContext], None] = None,
        check_peer: Optional[Callable[[ssl.SSLSocket], Optional[str]]] = None,
        extra_headers: Callable[[], Headers] = lambda: (),
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        if max_requests < 1 or read_timeout <= 0:
            raise ValueError("max_requests must be at least 1 and read_timeout greater than 0")
        self.app = app
        self.max_requests = max_requests
        self.read_timeout = read_timeout
        self.tls = ssl_context is not None
        self._ssl_context = ssl_context
        self._check_peer = check_peer
        self.extra_headers = extra_headers
        self._on_refused = on_refused
        host, port = address
        self._listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(socket.SOMAXCONN)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        bound = self._listener.getsockname()
        self.server_address: Tuple[str, int] = (bound[0], bound[1])
        # what wsgiref's WSGIServer puts in every request's environment
        self.base_environ: WSGIEnvironment = {
            "SERVER_NAME": socket.getfqdn(host),
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PORT": str(self.server_address[1]),
            "REMOTE_HOST": "",
            "CONTENT_LENGTH": "",
            "SCRIPT_NAME": "",
        }
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._pending: collections.OrderedDict[_Connection, None] = collections.OrderedDict()  # by deadline
        self._lock = threading.Lock()
        self._active = 0  # requests being served, each by a thread
        self._closed = False
        self._running = False
        self._exited = threading.Event()
        self._accept_paused_until: Optional[float] = None
        self._log_refusal = _RateLimitedLog()
        self._log_accept_error = _RateLimitedLog()

    @property
    def active(self) -> int:
        """Requests being served right now (threads)."""
        return self._active

    @property
    def pending(self) -> int:
        """Connections waiting for their request head (no thread)."""
        return len(self._pending)

    # -- the loop -------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Run the serving loop until shutdown() (returns at once if it was called already)."""
        with self._lock:
            if self._closed:
                return
            self._running = True
        try:
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed:
                for key, _ in self._selector.select(self._select_timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._readable(key.data)
                now = time.monotonic()
                self._expire(now)
                if self._accept_paused_until is not None and now >= self._accept_paused_until:
                    self._accept_paused_until = None
                    self._selector.register(self._listener, selectors.EVENT_READ)
        finally:
            self._close_all()
            self._exited.set()

    def shutdown(self) -> None:
        """Stop the loop, wait for it, and close the listening socket and pending connections."""
        with self._lock:
            self._closed = True
            running = self._running
        if running:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass  # the wake-up socket is full: a wake-up is on its way anyway
            self._exited.wait()
        else:
            self._close_all()

    def _select_timeout(self) -> Optional[float]:
        times = [] if self._accept_paused_until is None else [self._accept_paused_until]
        if self._pending:
            times.append(next(iter(self._pending)).deadline)
        return max(0.0, min(times) - time.monotonic()) if times else None

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass  # drained

    def _accept(self) -> None:
        for _ in range(256):  # then give the pending connections a turn
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in RESOURCE_ERRORS:
                    self._log_accept_error("cannot accept HTTP connections: %s; pausing %g s", exc, ACCEPT_BACKOFF)
                    self._selector.unregister(self._listener)
                    self._accept_paused_until = time.monotonic() + ACCEPT_BACKOFF
                else:
                    log.debug("accept failed: %s", exc)
                return
            sock.setblocking(False)
            conn = _Connection(sock, address, time.monotonic() + self.read_timeout)
            self._pending[conn] = None
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _readable(self, conn: _Connection) -> None:
        if self.tls:
            self._dispatch(conn)  # the handshake happens in the request's thread
            return
        try:
            data = conn.sock.recv(MAX_HEAD)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # reset by the client
        if not data:
            self._drop(conn)
            return
        start = max(0, len(conn.head) - 3)
        conn.head += data
        end = conn.head.find(b"\r\n\r\n", start)
        if (end < 0 and len(conn.head) > MAX_HEAD) or end + 4 > MAX_HEAD:
            log.debug("HTTP request head from %s over %d bytes: 431", conn.address[0], MAX_HEAD)
            self._on_refused(REFUSED_HEAD_TOO_LARGE)
            self._answer(conn, _head_too_large(self.extra_headers()))
        elif end >= 0 or not HTTP_START.match(conn.head):
            self._dispatch(conn)

    def _expire(self, now: float) -> None:
        expired = 0
        while self._pending:
            conn = next(iter(self._pending))
            if conn.deadline > now:
                break
            self._drop(conn)
            expired += 1
        if expired:
            log.debug(
                "closed %d HTTP connections without a complete request head after %g s", expired, self.read_timeout
            )

    def _forget(self, conn: _Connection) -> None:
        """The loop stops watching `conn`; its socket stays open."""
        self._selector.unregister(conn.sock)
        del self._pending[conn]

    def _drop(self, conn: _Connection) -> None:
        self._forget(conn)
        conn.sock.close()

    def _answer(self, conn: _Connection, response: bytes) -> None:
        """Write a short response without blocking (what does not fit is lost), then close."""
        self._forget(conn)
        try:
            conn.sock.send(response)
        except OSError:
            pass  # the client is gone or not reading
        _close(conn.sock)

    def _dispatch(self, conn: _Connection) -> None:
        with self._lock:
            refuse = self._active >= self.max_requests
            if not refuse:
                self._active += 1
        if refuse:
            self._on_refused(REFUSED_BUSY)
            self._log_refusal(
                "refusing HTTP requests with 503 (over TLS: closing them): %d are being "
                "served, the limit (--web-max-requests)",
                self.max_requests,
            )
            if self.tls:
                self._drop(conn)
            else:
                self._answer(conn, _busy(self.extra_headers()))
            return
        self._forget(conn)
        thread = threading.Thread(target=self._serve, args=(conn,), name="http-request", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # can't start new thread
            log.warning("cannot start a thread for an HTTP request: %s", exc)
            with self._lock:
                self._active -= 1
            conn.sock.close()

    # -- a request's thread ---------------------------------------------------------------

    def context(self) -> Optional[ssl.SSLContext]:
        """The TLS context for a new connection (None: plain HTTP)."""
        if self._ssl_context is None or isinstance(self._ssl_context, ssl.SSLContext):
            return self._ssl_context
        return self._ssl_context()

    def _serve(self, conn: _Connection) -> None:
        sock = conn.sock
        try:
            context = self.context()
            if context is not None:
                sock.settimeout(max(0.001, conn.deadline - time.monotonic()))
                tls = context.wrap_socket(sock, server_side=True)
                sock = tls
                refused = self._check_peer(tls) if self._check_peer is not None else None
                if refused is not None:
                    log.debug("TLS client %s turned away: %s", conn.address[0], refused)
                    self._on_refused(REFUSED_CLIENT_CERTIFICATE)
                    return
            else:
                sock.settimeout(self.read_timeout)
            _Handler(sock, conn.address, self, bytes(conn.head), conn.deadline)
        except Exception:
            log.debug("HTTP request from %s failed", conn.address[0], exc_info=True)
        finally:
            with self._lock:
                self._active -= 1
            _close(sock)

    # -- closing --------------------------------------------------------------------------

    def _close_all(self) -> None:
        for conn in list(self._pending):
            conn.sock.close()
        self._pending.clear()
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
