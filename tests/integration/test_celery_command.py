"""`celery -A it_worker_app exporter`: the exporter as a subcommand of Celery's own command
line (the `celery.commands` entry point), with its broker and beat schedule read from the app
that Celery's -A names, counting a real worker's tasks. No --broker-url is given: the app's
is the test's own Redis database."""

from __future__ import annotations

import os

import pytest

from .rig import EXPORTER_TIMINGS, HERE, HOST, Exporter, Proc, clean_env, executable, free_port, wait_for

pytestmark = pytest.mark.integration


def test_celery_subcommand_serves_the_app_named_by_dash_a(make_rig, tmp_path):
    rig = make_rig("redis")
    port = free_port()
    env = clean_env(
        TZ="UTC",
        IT_BROKER_URL=rig.broker_url,
        PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    argv = [executable("celery"), "-A", "it_worker_app", "exporter", "--listen-address", HOST, "--port", str(port)]
    proc = Proc("celery-exporter", [*argv, *EXPORTER_TIMINGS, "--log-level", "DEBUG"], tmp_path / "exp.log", env, HERE)
    rig.procs.append(proc)
    exporter = Exporter(proc, port)
    wait_for(
        lambda: not proc.running or exporter.get("/-/ready")[0] == 200,
        30,
        what="`celery -A it_worker_app exporter` to connect to the app's broker",
        describe=proc.log_text,
    )
    assert proc.running, proc.log_text()
    assert "configuration from the Celery app it_worker_app" in proc.log_text()
    m = exporter.metrics()
    # the app's beat schedule: only --app gives it
    assert m.get_value("celery_beat_schedule_info", entry="it-tick", task="it.succeed", schedule="every 2s") == 1

    rig.start_worker(exporter=exporter)
    for value in range(3):
        rig.send("it.succeed", args=(value,))
    rig.truth.wait({("it.succeed", "celery", "succeeded"): 3})
    exporter.wait_for(
        lambda m: m.get_value("celery_task_succeeded_total", name="it.succeed", queue_name="celery") == 3,
        20,
        what="the three tasks to be counted",
        contains="it.succeed",
    )
