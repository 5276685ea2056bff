"""-A with a Django project whose beat uses django-celery-beat's DatabaseScheduler: the
entries are read from its tables (sqlite here), read only, and re-read so that added and
disabled entries follow."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from .rig import Metrics, clean_env

pytestmark = pytest.mark.integration

SETTINGS = """
import os
SECRET_KEY = "test-only"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["IT_DJANGO_DB"]}}
USE_TZ = True
TIME_ZONE = "UTC"
CELERY_BROKER_URL = os.environ["IT_BROKER_URL"]
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
"""
CELERY = """
import os
from celery import Celery
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
app = Celery("mysite")
app.config_from_object("django.conf:settings", namespace="CELERY")
"""


def django(env, code: str) -> None:
    script = "import django; django.setup()\n" + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def entries(m: Metrics):
    return {(dict(lbl)["entry"], dict(lbl)["task"]) for lbl in m.select("celery_beat_schedule_info")}


def test_entries_come_from_the_database_and_follow_its_changes(make_rig, tmp_path):
    rig = make_rig("redis")
    project = tmp_path / "project"
    (project / "mysite").mkdir(parents=True)
    (project / "mysite" / "__init__.py").write_text("")
    (project / "mysite" / "settings.py").write_text(SETTINGS)
    (project / "mysite" / "celery.py").write_text(CELERY)
    env = {
        "IT_DJANGO_DB": str(tmp_path / "db.sqlite3"),
        "IT_BROKER_URL": rig.broker_url,
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "PYTHONPATH": str(project),
    }
    full_env = clean_env(**env)
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v", "0"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert migrate.returncode == 0, migrate.stderr
    django(
        full_env,
        """
        from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
        every, _ = IntervalSchedule.objects.get_or_create(every=30, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name="sync", task="app.sync", interval=every)
        cron, _ = CrontabSchedule.objects.get_or_create(minute="0", hour="3", day_of_week="*",
                                                         day_of_month="*", month_of_year="*")
        PeriodicTask.objects.create(name="nightly", task="reports.nightly", crontab=cron)
        PeriodicTask.objects.create(name="paused", task="app.paused", interval=every, enabled=False)
    """,
    )
    exporter = rig.start_exporter("-A", "mysite", "--schedule-refresh-interval", "1s", "--no-inspect", env=env)
    m = exporter.wait_for(
        lambda m: entries(m) == {("sync", "app.sync"), ("nightly", "reports.nightly")},
        20,
        what="the two enabled entries",
        contains="beat",
    )
    assert m.get_value("celery_beat_schedule_interval_seconds", entry="sync", task="app.sync") == 30
    assert m.get_value("celery_beat_schedule_interval_seconds", entry="nightly", task="reports.nightly") == 86400

    django(
        full_env,
        """
        from django_celery_beat.models import IntervalSchedule, PeriodicTask
        PeriodicTask.objects.filter(name="sync").update(enabled=False)
        minute, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.MINUTES)
        PeriodicTask.objects.create(name="minutely", task="app.minutely", interval=minute)
    """,
    )
    m = exporter.wait_for(
        lambda m: entries(m) == {("minutely", "app.minutely"), ("nightly", "reports.nightly")},
        20,
        what="the schedule change to be followed",
        contains="beat",
    )
    assert m.get_value("celery_beat_schedule_interval_seconds", entry="minutely", task="app.minutely") == 60
    assert m.get_value("celery_exporter_beat_schedule_read_errors_total") == 0
    assert m.get_value("celery_exporter_queue_poll_errors_total", reason="schedule") is None  # not the poller's
