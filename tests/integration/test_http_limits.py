"""The real exporter under idle and half-open connections: 2,000 unfinished request heads
cost no thread and almost no memory, scrapes stay fast meanwhile, and every one of them is
closed at --web-read-timeout; so is a client that trickles its head a byte at a time."""

from __future__ import annotations

import resource
import select
import socket
import time
from pathlib import Path
from typing import Dict, List

import pytest

from .rig import HOST, wait_for
from .test_http_server import half_open, wait_closed

pytestmark = pytest.mark.integration

READ_TIMEOUT = 3.0
CONNECTIONS = 2000


def proc_status(pid: int) -> Dict[str, int]:
    """Threads and VmRSS (KiB) from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"threads": int(fields["Threads"]), "rss_kib": int(fields["VmRSS"].split()[0])}


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def timed_scrape(exporter) -> float:
    started = time.monotonic()
    status, _, body = exporter.get("/metrics")
    elapsed = time.monotonic() - started
    assert status == 200 and "celery_exporter_build_info{" in body, (status, body[:300])
    return elapsed


@pytest.fixture
def enough_fds():
    """The test holds 2,000 sockets and so does the exporter (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = CONNECTIONS + 500
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_2000_half_open_connections_hold_no_thread_and_are_closed(make_rig, enough_fds):
    rig = make_rig("redis")
    exporter = rig.start_exporter("--web-read-timeout", f"{READ_TIMEOUT:g}s")
    pid = exporter.proc.pid
    for _ in range(3):  # warm up: the first scrapes allocate what every later one reuses
        timed_scrape(exporter)
    fds_before = open_fds(pid)
    before = proc_status(pid)

    opened = time.monotonic()
    clients: List[socket.socket] = half_open(exporter.port, CONNECTIONS)
    opening = time.monotonic() - opened
    try:
        wait_for(
            lambda: open_fds(pid) - fds_before >= CONNECTIONS,
            2.0,
            interval=0.02,
            what=f"the exporter to accept all {CONNECTIONS} connections",
            describe=lambda: f"{open_fds(pid) - fds_before} accepted",
        )
        during = proc_status(pid)
        scrapes = [timed_scrape(exporter) for _ in range(5)]
        during_after_scrapes = proc_status(pid)
        still_open = time.monotonic() - opened < READ_TIMEOUT
        assert still_open, f"opening and measuring took {time.monotonic() - opened:.2f} s: test too slow to show much"
        assert open_fds(pid) - fds_before >= CONNECTIONS  # none was closed while we measured

        closed = wait_closed(clients, READ_TIMEOUT + 5.0)
        after_open = sorted(t - opened for t in closed.values())
        assert len(closed) == CONNECTIONS
        assert after_open[0] >= READ_TIMEOUT - 0.5, f"one was closed after only {after_open[0]:.2f} s"
        assert after_open[-1] <= READ_TIMEOUT + opening + 2.0, f"the last was closed after {after_open[-1]:.2f} s"
    finally:
        for sock in clients:
            sock.close()
    first_after = timed_scrape(exporter)
    after = proc_status(pid)

    figures = (
        f"threads {before['threads']} -> {during['threads']} / {during_after_scrapes['threads']} -> "
        f"{after['threads']}; RSS MiB {before['rss_kib'] / 1024:.1f} -> {during['rss_kib'] / 1024:.1f} / "
        f"{during_after_scrapes['rss_kib'] / 1024:.1f} -> {after['rss_kib'] / 1024:.1f}; "
        f"opening {opening:.2f} s; scrapes while held {', '.join(f'{s * 1000:.0f}' for s in scrapes)} ms; "
        f"first scrape after {first_after * 1000:.0f} ms; closed {after_open[0]:.2f}..{after_open[-1]:.2f} s "
        "after opening"
    )
    print("\n" + figures)
    assert max(during["threads"], during_after_scrapes["threads"]) <= before["threads"] + 3, figures
    assert max(during["rss_kib"], during_after_scrapes["rss_kib"]) - before["rss_kib"] <= 5 * 1024, figures
    assert max(scrapes) < 1.0 and first_after < 1.0, figures
    assert after["threads"] <= before["threads"] + 3, figures
    assert exporter.proc.running


def test_a_trickled_head_is_closed_at_the_deadline(make_rig):
    rig = make_rig("redis")
    exporter = rig.start_exporter("--web-read-timeout", f"{READ_TIMEOUT:g}s")
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slowloris\r\n\r\n"  # 60 s at 2 bytes/s
    with socket.create_connection((HOST, exporter.port), timeout=5) as sock:
        opened = time.monotonic()
        sent = 0
        closed_after = None
        while closed_after is None and time.monotonic() - opened < READ_TIMEOUT + 5.0:
            try:
                sock.send(head[sent : sent + 1])
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - opened
                break
            # the pace of the trickle: half a second, or until the server closes the connection
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                assert data == b"", f"the server answered {data[:200]!r}"
                closed_after = time.monotonic() - opened
    assert closed_after is not None, f"still open {READ_TIMEOUT + 5:g} s after connecting, {sent} bytes sent"
    assert READ_TIMEOUT - 0.5 <= closed_after <= READ_TIMEOUT + 1.5, f"closed after {closed_after:.2f} s"
    assert 5 <= sent < len(head), f"{sent} bytes sent"
    assert exporter.get("/-/healthy")[0] == 200
