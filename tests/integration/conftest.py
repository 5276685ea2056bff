"""Fixtures of the integration suite: real Redis (127.0.0.1:6379), real RabbitMQ
(127.0.0.1:5672, guest/guest, rabbitmqctl), the exporter's console script and real
`celery worker -E` processes. See rig.py."""

from __future__ import annotations

import socket
import subprocess

import pytest
import redis

from .rig import ACTIVE, AMQP_PORT, HOST, REDIS_PORT, RedisDbs, RigFactory


@pytest.fixture(scope="session")
def services():
    """Fail loudly (not skip) when a broker is missing: CI provides both."""
    try:
        redis.Redis(host=HOST, port=REDIS_PORT, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.fail(f"Redis is not answering on {HOST}:{REDIS_PORT}: {exc}")
    try:
        socket.create_connection((HOST, AMQP_PORT), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"RabbitMQ is not answering on {HOST}:{AMQP_PORT}: {exc}")
    if subprocess.run(["rabbitmqctl", "-q", "status"], capture_output=True).returncode != 0:
        pytest.fail("rabbitmqctl does not work (the suite creates a vhost per test)")


@pytest.fixture(scope="session")
def redis_dbs(services) -> RedisDbs:
    return RedisDbs()


@pytest.fixture(scope="session")
def truth_db(redis_dbs):
    """One DB of the shared Redis for the tasks' ground truth, every test under its own
    key prefix. Kept on the shared server so it survives a private broker's restart."""
    db = redis_dbs.claim()
    yield db
    redis_dbs.flush(db)


@pytest.fixture
def make_rig(request, tmp_path, redis_dbs, truth_db):
    factory = RigFactory(tmp_path, redis_dbs, truth_db)
    request.addfinalizer(factory.close)
    return factory


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the output of every process a failed test started to its report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    seen = set()
    for factory in list(ACTIVE):
        for title, proc in factory.log_files:
            if id(proc) in seen:
                continue
            seen.add(id(proc))
            report.sections.append((f"{title} output ({proc.log_path})", proc.log_text()))
