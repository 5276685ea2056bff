"""celery_exporter.httpserver on its own, with a WSGI app of the test's: the request cap
(503 at once, then served again), deadlines for unfinished request heads (plain and TLS),
the 64 KiB head limit, a prompt shutdown, and accept errors (EMFILE) that the loop survives.
Real sockets on 127.0.0.1; no broker."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from celery_exporter.httpserver import Server

from .rig import HOST, make_certs, wait_for

pytestmark = pytest.mark.integration

HALF_HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # no blank line: the head never ends
REPO = Path(__file__).resolve().parents[2]


class App:
    """Answers with the path, query and a few headers as JSON; /block waits for `release`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/block":
            with self._lock:
                self.entered += 1
            self.release.wait(30)
        keys = ("PATH_INFO", "QUERY_STRING", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING", "HTTP_AUTHORIZATION")
        body = json.dumps({k: environ.get(k) for k in keys}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


@contextlib.contextmanager
def serving(app, **options) -> Iterator[Server]:
    server = Server((HOST, 0), app, **options)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(5)
        assert not thread.is_alive(), "the serving loop did not end"


def get(
    port: int,
    path: str,
    context: Optional[ssl.SSLContext] = None,
    headers: Optional[Dict[str, str]] = None,
    timeout: float = 10.0,
):
    """(status, headers, body) of one request."""
    if context is None:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=context)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def request_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "http-request"]


def half_open(port: int, count: int) -> List[socket.socket]:
    """`count` connections that each sent the start of a request head and nothing more."""
    clients = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=5)
        sock.sendall(HALF_HEAD)
        clients.append(sock)
    return clients


def wait_closed(socks: Sequence[socket.socket], timeout: float) -> Dict[socket.socket, float]:
    """Wait until the server closed every one of `socks` (recv gives b"" or a reset); returns
    time.monotonic() of each closing. Fails if the server sends anything instead, or if some
    are still open after `timeout`."""
    closed: Dict[socket.socket, float] = {}
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while len(closed) < len(socks):
            left = deadline - time.monotonic()
            assert left > 0, f"{len(socks) - len(closed)} of {len(socks)} connections still open after {timeout:g} s"
            for key, _ in selector.select(min(left, 0.5)):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue  # TLS bookkeeping (session tickets), no application data
                except (ConnectionResetError, ssl.SSLEOFError):
                    data = b""
                assert data == b"", f"the server sent {data[:200]!r} instead of closing"
                closed[sock] = time.monotonic()
                selector.unregister(sock)
    finally:
        selector.close()
    return closed


def test_environment_and_head_limit():
    refused: List[str] = []
    extra = (("X-Frame-Options", "deny"),)
    with serving(App(), on_refused=refused.append, extra_headers=lambda: extra) as server:
        port = server.server_address[1]
        assert server.server_address[0] == HOST and port > 0
        status, headers, body = get(
            port,
            "/metrics%20x?name[]=a&b=1",
            headers={
                "Accept": "application/openmetrics-text",
                "Accept-Encoding": "gzip",
                "Authorization": "Basic eDp5",
            },
        )
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert json.loads(body) == {
            "PATH_INFO": "/metrics x",
            "QUERY_STRING": "name[]=a&b=1",
            "HTTP_ACCEPT": "application/openmetrics-text",
            "HTTP_ACCEPT_ENCODING": "gzip",
            "HTTP_AUTHORIZATION": "Basic eDp5",
        }
        # a head that goes on past 64 KiB: 431, then closed
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 431 Request Header Fields Too Large\r\n"), answer[:200]
        assert b"\r\nConnection: close\r\n" in answer and b"\r\nX-Frame-Options: deny\r\n" in answer
        assert refused == ["head_too_large"]
        # another protocol (a Redis client given this port): wsgiref's 400, with a status line
        # and the extra headers, and closed at once, not after the 10 s deadline
        with socket.create_connection((HOST, port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert b"Error code: 400" in answer and time.monotonic() - started < 1.0, answer[:300]
            assert answer.startswith(b"HTTP/1.0 400 ") and b"\r\nX-Frame-Options: deny\r\n" in answer, answer[:300]
        assert get(port, "/after")[0] == 200


def test_requests_over_the_cap_get_503_at_once_and_are_served_again_after(caplog):
    caplog.set_level(logging.DEBUG, logger="celery_exporter.httpserver")
    app = App()
    results: Dict[int, tuple] = {}
    refused: List[str] = []
    with serving(app, max_requests=2, on_refused=refused.append) as server:
        port = server.server_address[1]
        blockers = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, get(port, "/block")), daemon=True)
            for i in range(2)
        ]
        for thread in blockers:
            thread.start()
        wait_for(lambda: app.entered == 2 and server.active == 2, 5, what="two requests blocked in the app")

        started = time.monotonic()
        status, headers, body = get(port, "/third")
        elapsed = time.monotonic() - started
        assert status == 503, (status, body)
        assert headers["Retry-After"] == "1" and headers["Connection"] == "close"
        assert headers["Content-Type"].startswith("text/plain") and "too many requests" in body
        assert elapsed < 1.0, f"the 503 took {elapsed:.3f} s"
        assert get(port, "/fourth")[0] == 503
        assert refused == ["max_requests", "max_requests"]
        assert results == {} and server.active == 2 and len(request_threads()) == 2  # the two still block

        refusals = [r for r in caplog.records if r.name == "celery_exporter.httpserver" and "503" in r.getMessage()]
        assert [r.levelno for r in refusals] == [logging.WARNING, logging.DEBUG]  # no log spam

        app.release.set()
        for thread in blockers:
            thread.join(10)
        assert [results[i][0] for i in range(2)] == [200, 200]
        wait_for(lambda: server.active == 0, 5, what="the request threads to end")
        status, _, body = get(port, "/later?x=1")
        assert status == 200 and json.loads(body)["QUERY_STRING"] == "x=1"
    print(f"\n503 answered in {elapsed * 1000:.1f} ms while 2 of max 2 requests were blocked")


def test_unfinished_heads_hold_no_thread_and_are_closed_at_the_deadline():
    with serving(App(), read_timeout=1.0) as server:
        port = server.server_address[1]
        opened = time.monotonic()
        clients = half_open(port, 50)
        wait_for(lambda: server.pending == 50, 5, what="50 pending connections")
        assert server.active == 0 and request_threads() == []
        closed = wait_closed(clients, 5)
        after = sorted(t - opened for t in closed.values())
        assert after[0] >= 0.9, f"closed before the deadline: {after[0]:.2f} s"
        assert after[-1] <= 2.5, f"closed late: {after[-1]:.2f} s"
        assert server.pending == 0
        assert get(port, "/")[0] == 200
        for sock in clients:
            sock.close()


def test_tls_idle_client_holds_no_thread_and_https_is_served(tmp_path):
    certs = make_certs(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(certs["server.crt"]), str(certs["server.key"]))
    client_context = ssl.create_default_context(cafile=str(certs["ca.crt"]))
    app = App()
    with serving(app, read_timeout=1.0, max_requests=1, ssl_context=server_context) as server:
        port = server.server_address[1]
        # connects, never starts the handshake: the loop holds it, no thread; closed at the deadline
        opened = time.monotonic()
        idle = socket.create_connection((HOST, port), timeout=5)
        wait_for(lambda: server.pending == 1, 5, what="the idle TLS connection to be pending")
        assert server.active == 0 and request_threads() == []
        after = wait_closed([idle], 5)[idle] - opened
        assert 0.9 <= after <= 2.5, f"closed after {after:.2f} s"
        idle.close()

        status, _, body = get(port, "/hello?q=1", client_context)
        assert status == 200 and json.loads(body)["PATH_INFO"] == "/hello"

        # handshake done, head never finished: closed at the deadline from connecting
        opened = time.monotonic()
        slow = client_context.wrap_socket(socket.create_connection((HOST, port), timeout=5), server_hostname=HOST)
        slow.sendall(HALF_HEAD)
        after = wait_closed([slow], 5)[slow] - opened
        assert 0.9 <= after <= 2.5, f"closed after {after:.2f} s"
        slow.close()
        wait_for(lambda: server.active == 0, 5, what="the request thread to end")

        # over the cap (1): a TLS connection is closed without an answer
        result: Dict[str, tuple] = {}
        blocker = threading.Thread(
            target=lambda: result.setdefault("r", get(port, "/block", client_context)), daemon=True
        )
        blocker.start()
        wait_for(lambda: app.entered == 1 and server.active == 1, 5, what="one HTTPS request blocked")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(port, "/refused", client_context)
        app.release.set()
        blocker.join(10)
        assert result["r"][0] == 200
        wait_for(lambda: server.active == 0, 5, what="the request thread to end")
        assert get(port, "/again", client_context)[0] == 200


def test_a_client_that_stops_reading_and_an_app_error_are_logged_not_printed(caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="celery_exporter.httpserver")
    big = b"x" * (32 << 20)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/fail":
            raise RuntimeError("the app failed")
        start_response("200 OK", [("Content-Length", str(len(big)))])
        return [big]

    with serving(app, read_timeout=0.5) as server:
        port = server.server_address[1]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((HOST, port))
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read the answer
        wait_for(lambda: server.active == 1, 5, what="the request to be served")
        wait_for(lambda: server.active == 0, 5, what="the write to time out and the thread to end")
        sock.close()
        status, _, body = get(port, "/fail")
        assert status == 500 and "server error" in body
    records = [r for r in caplog.records if r.name == "celery_exporter.httpserver" and r.exc_info]
    assert [(r.levelno, type(r.exc_info[1])) for r in records] == [
        (logging.DEBUG, TimeoutError),
        (logging.ERROR, RuntimeError),
    ]
    assert "Traceback" not in capsys.readouterr().err  # nothing printed past the logging


def test_shutdown_is_prompt_and_closes_everything():
    server = Server((HOST, 0), App(), read_timeout=60.0)
    port = server.server_address[1]
    with pytest.raises(OSError):
        Server((HOST, port), App())  # the port is taken: binding fails in the constructor
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    clients = half_open(port, 5)
    wait_for(lambda: server.pending == 5, 5, what="5 pending connections")
    started = time.monotonic()
    server.shutdown()
    elapsed = time.monotonic() - started
    thread.join(1)
    assert not thread.is_alive() and elapsed < 0.5, f"shutdown took {elapsed:.3f} s"
    assert len(wait_closed(clients, 2)) == 5
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=2)
    for sock in clients:
        sock.close()


EMFILE_SERVER = """
import logging, os, resource, sys
from celery_exporter.httpserver import Server

logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")

def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "3")])
    return [b"ok\\n"]

server = Server(("127.0.0.1", 0), app, read_timeout=1.0)
in_use = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 3, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_accept_errors_do_not_stop_the_loop(tmp_path):
    """A server process with 3 spare file descriptors: accepting more fails with EMFILE. The
    loop logs it once, keeps going, and serves again once connections are gone."""
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER], cwd=REPO, stdout=subprocess.PIPE, stderr=out)
    try:
        port = int(proc.stdout.readline())
        clients = half_open(port, 12)  # the backlog takes them; the server accepts a few at a time
        closed = wait_closed(clients, 15)  # every one accepted in turn, and closed at its deadline
        assert len(closed) == 12 and proc.poll() is None
        assert get(port, "/")[0] == 200
        for sock in clients:
            sock.close()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    warnings = [line for line in output.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "Too many open files" in warnings[0], output + log_path.read_text()
