"""Message decoding in the receiver, the HTTP endpoints and the command line."""

import base64
import gzip
import io
import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from celery_exporter import cli, learned, redis_events
from celery_exporter.kombu_events import decode_message
from celery_exporter.receiver import COALESCE_SECONDS, Receiver, mask_url
from celery_exporter.settings import Settings
from celery_exporter.web import Web

from .conftest import Rig, heartbeat, received, started, succeeded

ROOT = Path(__file__).resolve().parents[2]


class FakeMessage:
    def __init__(self, body):
        self.body = body

    def decode(self):
        if isinstance(self.body, Exception):
            raise self.body
        return json.loads(json.dumps(self.body))


def receiver_for(rig):
    return Receiver(rig.settings, rig.handler, rig.store, rig.clock, threading.Event())


def deliver(r, *messages):
    """Messages of kombu's consumer, as the receiver's loop hands them on (decoded by the
    kombu reader's decode function)."""
    r._deliver(list(messages), decode_message, r.clock.now())


def test_task_multi_batches_are_unpacked(rig):
    r = receiver_for(rig)
    deliver(r, FakeMessage([received("u1"), started("u1"), succeeded("u1")]))
    deliver(r, FakeMessage(heartbeat()))
    rig.settle()
    assert rig.value("celery_task_succeeded_total", name="app.add", queue_name="unknown") == 1
    assert rig.value("celery_worker_up", hostname="w1@h") == 1


def test_undecodable_messages_and_handler_bugs_are_counted_not_fatal(rig, monkeypatch):
    r = receiver_for(rig)
    deliver(r, FakeMessage(ValueError("not json")))
    monkeypatch.setattr(rig.handler, "handle", lambda event, now: 1 / 0)
    deliver(r, FakeMessage([received("u1"), received("u2")]))
    assert rig.value("celery_exporter_events_dropped_total", reason="undecodable") == 1
    assert rig.value("celery_exporter_events_dropped_total", reason="handler_error") == 2


def test_a_bug_in_the_tick_is_counted_and_logged_once_never_fatal(rig, monkeypatch, caplog):
    """The tick runs in the backoff too, outside the reconnect loop's guard: a bug there must
    not end the event thread, nor pass for a broker outage inside the consume loop."""
    r = receiver_for(rig)
    monkeypatch.setattr(rig.handler, "tick", lambda now: 1 / 0)
    for _ in range(3):
        r._upkeep(rig.clock.now())
    assert rig.value("celery_exporter_events_dropped_total", reason="handler_error") == 3
    assert [rec.levelname for rec in caplog.records if "tick failed" in rec.getMessage()] == ["ERROR"]
    assert rig.value("celery_exporter_broker_reconnects_total") == 0


class FakeSubscription:
    """A Redis subscription (an EventStream) that hands out prepared reads, then asks the
    receiver to stop."""

    name = "fake"

    def __init__(self, reads, stop_event):
        self.reads, self.stop_event = list(reads), stop_event
        self.replies, self.log = 0, []
        self.decode = redis_events.decoder(["json"])

    def open(self, timeout):
        return []

    def check(self):
        return self.replies

    def read_many(self, timeout):
        if not self.reads:
            self.stop_event.set()
            return []
        batch = self.reads.pop(0)
        self.replies += len(batch)
        self.log.append(len(batch))
        return batch

    def gather(self, seconds):
        self.log.append(seconds)

    def close(self):
        pass


def test_a_read_with_messages_is_followed_by_a_pause_to_gather_more(rig):
    r = receiver_for(rig)
    body = base64.b64encode(json.dumps(heartbeat()).encode()).decode()
    message = json.dumps({"body": body, "properties": {"body_encoding": "base64"}}).encode()
    stream = FakeSubscription([[message], [message] * 3, [], [message]], r.stop_event)
    assert r._consume_stream(stream)
    # after a read with messages: a pause (which the stream ends early, or skips after a large
    # read: see test_redis_events); after an empty one (the read's own timeout): none
    assert stream.log == [1, COALESCE_SECONDS, 3, COALESCE_SECONDS, 0, 1, COALESCE_SECONDS]
    assert rig.value("celery_exporter_events_total", type="worker-heartbeat") == 5


def test_mask_url_hides_passwords():
    assert mask_url("amqp://user:s3cret@rabbit:5672/vh") == "amqp://user:**@rabbit:5672/vh"
    masked = mask_url("redis://:pw1@a:6379/0;redis://:pw2@b:6379/0")
    assert "pw1" not in masked and "pw2" not in masked and "a:6379" in masked and "b:6379" in masked


# -- HTTP ---------------------------------------------------------------------------------


def call(app, path, headers=None, query=""):
    environ = {
        "PATH_INFO": path,
        "REQUEST_METHOD": "GET",
        "QUERY_STRING": query,
        "SERVER_NAME": "x",
        "SERVER_PORT": "1",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }
    for k, v in (headers or {}).items():
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    result = {}

    def start_response(status, response_headers, exc_info=None):
        result["status"] = status
        result["headers"] = dict(response_headers)

    body = b"".join(app(environ, start_response))
    return int(result["status"].split()[0]), result["headers"], body


def web_for(rig, **settings):
    return Web(
        Settings(broker_url="amqp://guest:hunter2@rabbit//", **settings),
        rig.store,
        rig.collector,
        rig.process_registry,
        rig.clock,
    )


def test_health_and_readiness(rig):
    web = web_for(rig)
    assert call(web, "/-/healthy")[0] == 200
    assert call(web, "/-/ready")[0] == 503  # not connected: not ready, but still healthy
    rig.store.exporter.set_connected(True)
    assert call(web, "/-/ready")[0] == 200
    assert call(web, "/nope")[0] == 404


def test_probes_read_one_flag_not_a_snapshot_with_20000_label_sets():
    rig = Rig(max_series=25_000)
    rig.feed(*(received(f"u{i}", name=f"app.t{i}") for i in range(20_000)))
    rig.settle()
    assert rig.store.snapshot(rig.clock.now()).series.held["task"] == 20_000
    rig.store.exporter.set_connected(True)
    web = web_for(rig)

    def no_snapshot(now):
        raise AssertionError("a probe took a snapshot of the store")

    rig.store.snapshot = no_snapshot
    times = []
    for _ in range(50):
        started = time.perf_counter()
        assert call(web, "/-/ready")[0] == 200 and call(web, "/-/healthy")[0] == 200
        times.append(time.perf_counter() - started)
    assert sorted(times)[len(times) // 2] < 0.005  # both probes, median of 50
    with rig.store.lock:  # a long scrape or sweep holds the lock: the probe still answers
        assert call(web, "/-/ready")[0] == 200


def test_metrics_gzip_and_openmetrics_negotiation(rig):
    rig.feed(received("u1"))
    rig.settle()
    web = web_for(rig)
    status, headers, body = call(web, "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert b'celery_task_received_total{name="app.add",queue_name="unknown"} 1\n' in gzip.decompress(body)
    status, headers, body = call(web, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_status_page_masks_the_password_and_hints_at_missing_task_events(rig):
    rig.store.exporter.set_connected(True)
    rig.feed(heartbeat())
    status, _, body = call(web_for(rig), "/")
    page = body.decode()
    assert status == 200
    assert "hunter2" not in page and "amqp://guest:**@rabbit//" in page
    assert "start workers with -E" in page
    assert "w1@h" in page
    rig.feed(received("u1"))
    page = call(web_for(rig), "/")[2].decode()
    assert "start workers with -E" not in page
    assert "task_send_sent_event=True" in page


def test_status_page_says_what_was_learned_from_inspect_at_the_connect(rig):
    assert "<th>Learned at connect</th><td>not yet" in call(web_for(rig), "/")[2].decode()
    rig.store.exporter.set_connected(True, rig.clock.now())
    answered, running, waiting, refused = learned.parse(
        {"w1@h": [{"id": "a", "name": "app.add", "time_start": rig.clock.now() - 5}]}, {}
    )
    since = rig.clock.now()
    rig.store.running.offer_learned(learned.Learned(since, since, True, answered, running, waiting, refused))
    rig.advance(2)
    page = call(web_for(rig), "/")[2].decode()
    assert "learned 1 running tasks from inspect active (w1@h: 1; 0 already known, 0 ended unseen)" in page
    assert "1 workers answered (2 s ago)" in page


# -- command line -------------------------------------------------------------------------


def run_cli(argv, capsys, monkeypatch, env=None):
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    captured = {}
    monkeypatch.setattr(cli, "run", lambda settings: captured.setdefault("settings", settings))
    monkeypatch.setattr(cli.logs, "setup", lambda *a: None)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out, captured.get("settings")


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--port", "http"], "--port"),
        (["--worker-timeout", "soon"], "--worker-timeout"),
        (["--worker-ttl", "10s"], "--worker-ttl"),
        (["--runtime-buckets", "1,0.5"], "--runtime-buckets"),
        (["--transport-option", "novalue"], "--transport-option"),
        (["--broker-url", "nosuch://host"], "--broker-url"),
        (["--log-format", "xml"], "--log-format"),
        (["--max-series", "0"], "--max-series"),
        (["--frobnicate"], "--frobnicate"),
        (["--event-reader", "fastest"], "--event-reader"),
        (["--event-reader", "amqp-frames"], "--event-reader"),  # with the default Redis URL
        (["--broker-url", "amqp://h//", "--event-reader", "redis-py"], "--event-reader"),
        (["--broker-url", "memory://", "--event-reader", "py-amqp"], "--event-reader"),
    ],
)
def test_bad_flags_give_one_line_naming_the_flag_and_exit_2(argv, flag, capsys, monkeypatch):
    code, out, settings = run_cli(argv, capsys, monkeypatch)
    assert code == 2 and settings is None
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and lines[0].startswith("celery-exporter: error:")
    assert "Traceback" not in out.err


def test_options_come_from_flags_and_environment(capsys, monkeypatch):
    code, _, s = run_cli(
        [
            "--transport-option",
            "global_keyprefix=prod:",
            "--transport-option",
            "priority_steps=[0,5,9]",
            "--worker-ttl",
            "1h",
            "--runtime-buckets",
            "0.1,1,10",
            "--broker-ssl-option",
            "cert_reqs=2",
        ],
        capsys,
        monkeypatch,
        env={
            "CELERY_BROKER_URL": "amqp://u:p@rabbit//",
            "CELERY_EXPORTER_PORT": "9999",
            "CELERY_EXPORTER_TASK_HOSTNAME_LABEL": "true",
            "CELERY_EXPORTER_WORKER_TIMEOUT": "45",
        },
    )
    assert code == 0
    assert s.broker_url == "amqp://u:p@rabbit//"
    assert s.port == 9999 and s.worker_timeout == 45 and s.worker_ttl == 3600
    assert s.transport_options == {"global_keyprefix": "prod:", "priority_steps": [0, 5, 9]}
    assert s.runtime_buckets == (0.1, 1.0, 10.0)
    assert s.task_hostname_label is True
    assert s.broker_ssl == {"cert_reqs": 2}


@pytest.mark.parametrize(
    "argv, env, reader",
    [
        ([], {}, "auto"),
        (["--event-reader", "kombu"], {}, "kombu"),
        ([], {"CELERY_EXPORTER_EVENT_READER": "redis-py"}, "redis-py"),
        (["--event-reader", "amqp-frames", "--broker-url", "amqp://h//;amqps://g//"], {}, "amqp-frames"),
        (["--event-reader", "kombu", "--broker-url", "memory://"], {}, "kombu"),
    ],
)
def test_the_event_reader_is_chosen_by_flag_or_environment(argv, env, reader, capsys, monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    code, _, s = run_cli(argv, capsys, monkeypatch, env=env)
    assert code == 0 and s.event_reader == reader


def test_a_forced_reader_the_broker_cannot_use_is_named_in_the_error(capsys, monkeypatch):
    code, out, _ = run_cli(["--broker-url", "redis://:pw@h/0", "--event-reader", "amqp-frames"], capsys, monkeypatch)
    assert code == 2
    assert out.err.strip() == (
        "celery-exporter: error: Invalid value for '--event-reader': amqp-frames reads RabbitMQ over py-amqp "
        "only (amqp://, amqps://, pyamqp://), not redis://"
    )


def test_exporter_specific_broker_variable_wins(capsys, monkeypatch):
    _, _, s = run_cli(
        [],
        capsys,
        monkeypatch,
        env={"CELERY_BROKER_URL": "redis://a:6379/0", "CELERY_EXPORTER_BROKER_URL": "redis://b:6379/1"},
    )
    assert s.broker_url == "redis://b:6379/1"


def test_help_lists_every_option_with_its_environment_variable(capsys, monkeypatch):
    code, out, _ = run_cli(["--help"], capsys, monkeypatch)
    assert code == 0
    for param in cli.command.params:
        if param.name in ("help", "version"):
            continue
        if getattr(param, "hidden", False):  # the incumbent's flags: docs/migration.md lists them
            assert param.name.startswith("old_") and param.opts[0] not in out.out, param.name
            continue
        assert f"--{param.name.replace('_', '-')}" in out.out or param.opts[0] in out.out
        assert param.envvar, param.name
        for var in [param.envvar] if isinstance(param.envvar, str) else param.envvar:
            assert var in out.out.replace("\n", " ").replace("  ", " ") or var in out.out


# -- invariants between defaults and shipped alerts -----------------------------------------


def test_worker_ttl_outlives_timeout_plus_every_alert_on_worker_up():
    def seconds(text):
        units = {"s": 1, "m": 60, "h": 3600}
        return float(text[:-1]) * units[text[-1]]

    defaults = Settings()
    rules = [
        rule
        for path in (ROOT / "alerts").glob("*.rules.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    reading_up = [r for r in rules if "celery_worker_up" in r["expr"]]
    assert reading_up, "no shipped alert reads celery_worker_up"
    for rule in reading_up:
        assert defaults.worker_ttl > defaults.worker_timeout + seconds(rule.get("for", "0s")), rule["alert"]


def test_cli_defaults_are_the_settings_defaults(capsys, monkeypatch):
    for var in ("CELERY_BROKER_URL", "CELERY_EXPORTER_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    _, _, s = run_cli([], capsys, monkeypatch)
    assert s == Settings(broker_url="redis://localhost:6379/0")
