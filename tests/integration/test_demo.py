"""`celery-exporter demo`: no broker, real workers in threads, real /metrics on a port."""

from __future__ import annotations

import pytest

from .rig import HOST, Exporter, Metrics, Proc, clean_env, executable, free_port, wait_for

pytestmark = pytest.mark.integration


def total(m: Metrics, metric: str, **labels) -> float:
    return sum(m.select(metric, **labels).values())


def test_demo_serves_real_metrics_without_a_broker(tmp_path):
    port = free_port()
    proc = Proc(
        "demo",
        [executable("celery-exporter"), "demo", "--listen-address", HOST, "--port", str(port), "--duration", "40s"],
        tmp_path / "demo.log",
        clean_env(),
    )
    exporter = Exporter(proc, port)
    try:

        def complete(m: Metrics) -> bool:
            return (
                total(m, "celery_task_succeeded_total", name="demo.resize_image", queue_name="default") > 0
                and total(m, "celery_task_succeeded_total", name="demo.send_email", queue_name="emails") > 0
                and total(m, "celery_task_failed_total", name="demo.nightly_report") > 0
                and total(m, "celery_task_retried_total", name="demo.sync_account") > 0
                and m.get_value("celery_worker_up", hostname="alpha@demo") == 1
                and m.get_value("celery_worker_up", hostname="beta@demo") == 1
                and m.get_value("celery_worker_up", hostname="lost@demo") == 0
            )  # went silent

        wait_for(
            lambda: proc.running and exporter.get("/-/ready")[0] == 200,
            20,
            what="the demo to be ready",
            describe=proc.log_text,
        )
        m = exporter.wait_for(complete, 35, what="the demo's metrics", contains="demo")
        assert (
            m.get_value(
                "celery_task_exceptions_total", name="demo.nightly_report", queue_name="default", exception="ValueError"
            )
            > 0
        )
        assert (
            m.get_value(
                "celery_task_exceptions_total", name="demo.sync_account", queue_name="default", exception="TimeoutError"
            )
            > 0
        )
        assert {"default", "emails"} <= m.label_values("celery_queue_length", "queue_name")
        assert m.get_value("celery_exporter_events_dropped_total", reason="handler_error") == 0
        status, _, page = exporter.get("/")
        assert status == 200 and "lost@demo" in page and "DOWN" in page and "memory://" in page
        assert proc.popen.wait(timeout=30) == 0  # --duration ends it cleanly
        assert "Traceback" not in proc.log_text()
    finally:
        proc.stop()
