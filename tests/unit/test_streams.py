"""What every event reader shares (celery_exporter/streams.py): base64 read as the
standard library reads it, and the pause after a small read."""

import base64
import socket
import ssl
import time

import pytest

from celery_exporter import streams


@pytest.mark.parametrize(
    "data",
    [
        "eyJhIjogMX0=",  # canonical
        b"eyJhIjogMX0=",
        "eyJhIjogMX0",  # padding missing
        "eyJh\nIjogMX0=",  # a line break: the standard library skips it
        "eyJhIjog MX0=",
        "=eyJhIjogMX0=",  # padding first
        "eyJh==IjogMX0=",  # padding inside: the standard library stops there
        "eyJhIjogMX0=\u00e9",  # not ASCII
        "!!!!",
        "",
        42,
        None,
    ],
)
def test_base64_reads_as_the_standard_library_does(data):
    assert streams.fast_b64decode is not None, "pybase64 is a dependency: it must be installed"

    def outcome(decoder):
        try:
            return decoder(data)
        except Exception as exc:
            return type(exc)

    assert outcome(streams.b64decode) == outcome(base64.b64decode)


@pytest.fixture
def tcp_pair():
    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(listener.getsockname())
    theirs, _ = listener.accept()
    listener.close()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_pause_after_a_small_read_ends_as_soon_as_enough_is_waiting(tcp_pair):
    ours, theirs = tcp_pair
    gatherer = streams.Gatherer(ours)
    buffer = ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert gatherer.usable and gatherer.enough == min(streams.GATHER_BYTES, buffer // 4)
    theirs.sendall(b"x" * 100)
    started = time.monotonic()
    gatherer.wait(100, 0.05)  # less than enough is waiting: the whole pause
    assert time.monotonic() - started >= 0.04
    assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1  # reads as before after it
    theirs.sendall(b"x" * gatherer.enough)
    started = time.monotonic()
    gatherer.wait(100, 10.0)  # enough is waiting (a backlog): it ends at once
    gatherer.wait(gatherer.enough, 10.0)  # after a large read: no pause at all
    assert time.monotonic() - started < 5.0


def test_a_pause_sets_the_low_water_mark_back_as_it_was_and_skips_a_closed_socket(tcp_pair):
    ours, theirs = tcp_pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 5)  # (e.g. py-amqp's socket_settings)
    gatherer = streams.Gatherer(ours)
    gatherer.wait(0, 0.001)
    assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 5
    ours.close()
    gatherer.wait(0, 10.0)  # closed meanwhile: nothing to wait for, and no error


def test_no_pause_over_tls_or_a_unix_socket():
    unix, other = socket.socketpair()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls = context.wrap_socket(socket.socket(), server_hostname="broker", do_handshake_on_connect=False)
    try:
        for sock in (unix, tls):  # (a TLS read returns one record at most, however much waits)
            gatherer = streams.Gatherer(sock)
            assert not gatherer.usable
            started = time.monotonic()
            gatherer.wait(0, 10.0)
            assert time.monotonic() - started < 5.0
    finally:
        for sock in (unix, other, tls):
            sock.close()
