"""The real exporter's HTTP server against a seeded random corpus of hostile clients, on
loopback: malformed request lines and heads, huge and repeated headers, pipelined and
half-closed requests, slow senders, binary and TLS garbage. Bounded in count and time. No
crash, no thread or descriptor left behind, memory bounded, and a valid scrape answered
between every batch. The figures are printed (pytest -s shows them)."""

from __future__ import annotations

import collections
import random
import select
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Counter, List, Tuple

import pytest

from .rig import HOST, make_certs, wait_for
from .test_http_limits import open_fds, proc_status
from .test_web_security import request, start

pytestmark = pytest.mark.integration

SEED = 20261207
CASES = 1200  # plain HTTP
TLS_CASES = 200
BATCH = 16  # cases at once, then a valid scrape
TIME_BUDGET = 90.0  # seconds for the plain HTTP corpus; the run stops early past it
READ_TIMEOUT = 2.0
SLOW_PAUSE = 0.05  # seconds between the pieces of a slow sender's request
METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"PRI", b"get", b"G\x00T"]
PATHS = [b"/metrics", b"/", b"/-/healthy", b"/-/ready", b"*", b"http://x/metrics", b"/%zz", b"/\xff\xfe", b"//..//"]
VERSIONS = [b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1", b"http/1.1", b"", b"HTTP/1.1 extra"]


def rand_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def request_line(rng: random.Random) -> bytes:
    parts = [rng.choice(METHODS), rng.choice(PATHS), rng.choice(VERSIONS)]
    if rng.random() < 0.3:
        parts[rng.randrange(3)] = rand_bytes(rng, rng.randrange(1, 40))
    if rng.random() < 0.1:
        parts[1] = b"/metrics?" + b"&".join(b"name[]=" + rand_bytes(rng, 8).hex().encode() for _ in range(500))
    return rng.choice([b" ", b"  ", b"\t"]).join(parts)


def head(rng: random.Random) -> bytes:
    lines = [request_line(rng)]
    for _ in range(rng.randrange(0, 8)):
        kind = rng.random()
        if kind < 0.5:
            lines.append(b"X-" + rand_bytes(rng, 4).hex().encode() + b": " + rand_bytes(rng, 8).hex().encode())
        elif kind < 0.6:
            lines.append(b"no colon here")
        elif kind < 0.7:
            lines.append(b" continued: folded")
        elif kind < 0.8:
            lines.append(b"Content-Length: " + rng.choice([b"-1", b"999999999999", b"abc", b"5", b"0"]))
        elif kind < 0.9:
            lines.append(b"Authorization: Basic " + rand_bytes(rng, 12).hex().encode())
        else:
            lines.append(rand_bytes(rng, rng.randrange(1, 30)))
    return rng.choice([b"\r\n", b"\n", b"\r"]).join(lines) + b"\r\n\r\n"


def case(rng: random.Random) -> Tuple[str, List[bytes], bool]:
    """(kind, chunks to send, half-close after sending)."""
    kind = rng.choice(
        ["malformed", "malformed", "huge_header", "repeated_headers", "pipelined", "slow", "garbage", "valid", "body"]
    )
    half_close = rng.random() < 0.5
    if kind == "malformed":
        return kind, [head(rng)], half_close
    if kind == "huge_header":
        return kind, [b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * rng.choice([70_000, 200_000]) + b"\r\n\r\n"], True
    if kind == "repeated_headers":
        repeated = b"X-A: b\r\n" * rng.choice([100, 3000, 9000])
        return kind, [b"GET /metrics HTTP/1.1\r\n" + repeated + b"\r\n"], half_close
    if kind == "pipelined":
        valid = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
        return kind, [valid + head(rng) + valid * rng.randrange(1, 5)], half_close
    if kind == "slow":
        data = head(rng)
        cuts = sorted(rng.sample(range(1, len(data)), min(4, len(data) - 1)))
        return kind, [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])], half_close
    if kind == "garbage":
        return kind, [rand_bytes(rng, rng.randrange(1, 3000))], half_close
    if kind == "body":
        declared = rng.choice([10, 1000, 10_000_000])
        sent = rng.randrange(0, 2000)
        return kind, [b"POST /metrics HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % declared + b"x" * sent], True
    return kind, [b"GET /metrics HTTP/1.0\r\n\r\n"], half_close


def tls_case(rng: random.Random) -> Tuple[str, List[bytes], bool]:
    kind = rng.choice(["garbage", "record_header", "truncated_hello", "plain_http"])
    if kind == "garbage":
        return kind, [rand_bytes(rng, rng.randrange(1, 2000))], rng.random() < 0.5
    if kind == "record_header":  # a handshake record announcing a length it never sends
        return kind, [b"\x16\x03\x01" + rng.randrange(0, 65536).to_bytes(2, "big") + rand_bytes(rng, 50)], True
    if kind == "truncated_hello":
        return kind, [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rand_bytes(rng, rng.randrange(0, 300))], True
    return kind, [b"GET /metrics HTTP/1.1\r\n\r\n"], False


def send(port: int, kind: str, chunks: List[bytes], half_close: bool) -> str:
    """Sends one case (of `kind`); the outcome: the status code answered, '431-head' for the
    serving loop's own 431, 'closed', 'other' (bytes that are no HTTP answer) or an error name."""
    try:
        with socket.create_connection((HOST, port), timeout=READ_TIMEOUT + 3) as sock:
            received = b""
            for n, chunk in enumerate(chunks):
                sock.sendall(chunk)
                if n < len(chunks) - 1 and slow_pause(sock):  # a slow sender: the server may answer early
                    return outcome(sock.recv(65536))
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while len(received) < 1 << 20:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
    except OSError as exc:
        return type(exc).__name__
    return outcome(received)


def slow_pause(sock: socket.socket) -> bool:
    """Waits SLOW_PAUSE seconds for the server to say something (True if it did): the gap
    between a slow sender's pieces."""
    ready, _, _ = select.select([sock], [], [], SLOW_PAUSE)
    return bool(ready)


def outcome(received: bytes) -> str:
    if received.startswith(b"HTTP/"):
        status = received.split(b" ", 2)[1].decode("ascii", "replace")
        head_too_large = status == "431" and received.endswith(b"request head over 64 KiB\n")  # the loop's own 431
        return "431-head" if head_too_large else status
    return "closed" if not received else "other"


def settle(pid: int, threads: int, fds: int) -> None:
    wait_for(
        lambda: proc_status(pid)["threads"] <= threads and open_fds(pid) <= fds,
        READ_TIMEOUT + 15,
        what="request threads and descriptors to be released",
        describe=lambda: f"{proc_status(pid)} fds={open_fds(pid)}, before: threads={threads} fds={fds}",
    )


def test_fuzzed_clients_leave_the_server_serving(make_rig, capsys):
    rng = random.Random(SEED)
    rig = make_rig("redis")
    exporter = rig.start_exporter("--web-read-timeout", f"{READ_TIMEOUT:g}s")
    pid = exporter.proc.pid
    for _ in range(3):
        assert exporter.get("/metrics")[0] == 200  # warm up
    before, fds_before = proc_status(pid), open_fds(pid)
    outcomes: Counter[str] = collections.Counter()
    kinds: Counter[str] = collections.Counter()
    scrapes = sent = 0
    started = time.monotonic()
    with ThreadPoolExecutor(BATCH) as pool:
        while sent < CASES and time.monotonic() - started < TIME_BUDGET:
            batch = [case(rng) for _ in range(BATCH)]
            kinds.update(k for k, _, _ in batch)
            for outcome in pool.map(lambda c: send(exporter.port, *c), batch):
                outcomes[outcome] += 1
            sent += len(batch)
            status, _, body = exporter.get("/metrics")  # a valid scrape between every batch
            assert status == 200 and "celery_exporter_build_info{" in body, (status, body[:300])
            scrapes += 1
            assert exporter.proc.running, exporter.proc.log_text()
    elapsed = time.monotonic() - started
    settle(pid, before["threads"], fds_before + 2)
    after = proc_status(pid)
    refused = exporter.metrics()
    client_errors = sum(n for o, n in outcomes.items() if o.endswith("Error"))
    head_too_large = refused.get_value("celery_exporter_http_requests_refused_total", reason="head_too_large")
    with capsys.disabled():
        print(
            f"\nfuzz (seed {SEED}): {sent} hostile requests + {scrapes} scrapes in {elapsed:.1f} s; "
            f"kinds {dict(kinds)}; outcomes {dict(outcomes)}; client errors {client_errors}; "
            f"threads {before['threads']} -> {after['threads']}; RSS {before['rss_kib']} -> {after['rss_kib']} KiB; "
            f"fds {fds_before} -> {open_fds(pid)}; refused head_too_large={head_too_large:g}"
        )
    assert sent >= CASES // 2, f"only {sent} cases in {TIME_BUDGET} s"
    assert outcomes["200"] > 0 and outcomes["400"] > 0 and outcomes["431-head"] > 0
    assert outcomes["other"] == 0  # every answer has a status line
    # the loop's 431s are counted (a client still sending may see a reset instead of the answer)
    assert outcomes["431-head"] <= head_too_large <= outcomes["431-head"] + client_errors
    assert after["rss_kib"] - before["rss_kib"] < 30 * 1024, (before, after)
    log = exporter.proc.log_text(10_000_000)
    errors = [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]
    assert not errors, errors[:5]


def test_tls_garbage_leaves_the_server_serving(tmp_path, capsys):
    rng = random.Random(SEED + 1)
    certs = make_certs(tmp_path)
    proc, port = start(tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    context = ssl.create_default_context(cafile=str(certs["ca.crt"]))
    try:
        wait_for(lambda: request(port, "/-/healthy", context)[0] == 200, 30, what="https", describe=proc.log_text)
        before, fds_before = proc_status(proc.pid), open_fds(proc.pid)
        outcomes: Counter[str] = collections.Counter()
        with ThreadPoolExecutor(BATCH) as pool:
            for _ in range(TLS_CASES // BATCH):
                for outcome in pool.map(lambda c: send(port, *c), [tls_case(rng) for _ in range(BATCH)]):
                    outcomes[outcome] += 1
                assert request(port, "/metrics", context)[0] == 200
        settle(proc.pid, before["threads"], fds_before + 2)
        after = proc_status(proc.pid)
        with capsys.disabled():
            print(
                f"\nTLS fuzz (seed {SEED + 1}): {sum(outcomes.values())} garbage connections; outcomes "
                f"{dict(outcomes)}; threads {before['threads']} -> {after['threads']}; "
                f"RSS {before['rss_kib']} -> {after['rss_kib']} KiB"
            )
        assert after["rss_kib"] - before["rss_kib"] < 30 * 1024
        assert proc.running
        assert " ERROR " not in proc.log_text(10_000_000)
    finally:
        assert proc.stop() == 0
