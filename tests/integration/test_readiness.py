"""/-/ready says 200 only once the event subscription exists (kombu's Redis transport sends
PSUBSCRIBE lazily, on the first drain; events published before it are never heard)."""

from __future__ import annotations

import time

import pytest
import redis

from .rig import HOST, Proc, RedisServer, clean_env, executable, free_port, http_get

pytestmark = pytest.mark.integration


def test_ready_only_once_subscribed_to_events(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    client = redis.Redis(host=HOST, port=server.port)
    seen = []
    try:
        for attempt in range(3):
            port = free_port()
            proc = Proc(
                f"exporter-{attempt}",
                [
                    executable("celery-exporter"),
                    "--broker-url",
                    server.url,
                    "--listen-address",
                    HOST,
                    "--port",
                    str(port),
                    "--no-inspect",
                ],
                tmp_path / f"exporter-{attempt}.log",
                clean_env(),
            )
            try:
                deadline = time.monotonic() + 20
                while True:  # poll as fast as possible: the gap used to be 1-7 ms
                    try:
                        if http_get(f"http://{HOST}:{port}/-/ready", timeout=1)[0] == 200:
                            break
                    except OSError:
                        pass
                    assert proc.running, proc.log_text()
                    assert time.monotonic() < deadline, "never ready"
                seen.append(sum(1 for c in client.client_list() if int(c.get("psub", 0)) > 0))
            finally:
                proc.stop()
    finally:
        client.close()
        server.stop()
    assert seen == [1, 1, 1], f"pattern subscribers when /-/ready first said 200: {seen}"
