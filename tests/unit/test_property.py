"""Property-based: whatever arrives as an event (any JSON-like value, or events with any
field values), the handler never raises, and both expositions always parse to the same
samples, with every label set inside the caps."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Rig

EVENT_TYPES = st.sampled_from(
    [
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-rejected",
        "task-revoked",
        "task-cancelled",
        "worker-online",
        "worker-heartbeat",
        "worker-offline",
        "task-custom",
        "",
        "worker-",
        "x",
    ]
)
TEXT = st.text(max_size=40) | st.sampled_from(['a"b', "a\\b", "a\nb", "\x00", "\ud800", "é🐍", " ", "x" * 300])
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | TEXT
JSONISH = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)
UUIDS = st.sampled_from(["u1", "u2", "u3"]) | TEXT
NAMES = st.sampled_from(["app.a", "app.b"]) | TEXT


def events():
    field_values = {
        "uuid": UUIDS,
        "name": NAMES,
        "hostname": st.sampled_from(["w1@h", "w2@h"]) | TEXT,
        "timestamp": st.floats(1.7e9, 1.9e9) | SCALARS,
        "queue": st.sampled_from(["q1", None]) | TEXT,
        "runtime": st.floats(0, 100) | SCALARS,
        "retries": st.integers(0, 3) | SCALARS,
        "eta": st.none() | st.sampled_from(["2027-01-15T10:00:00+00:00", "not a date"]) | TEXT,
        "exception": TEXT | SCALARS,
        "traceback": TEXT | SCALARS,
        "freq": st.floats(0, 60) | SCALARS,
        "active": st.integers(0, 10) | SCALARS,
        "processed": st.integers(0, 10) | SCALARS,
        "sw_ident": TEXT | SCALARS,
        "routing_key": TEXT | SCALARS,
        "exchange": TEXT | SCALARS,
    }
    structured = st.fixed_dictionaries({"type": EVENT_TYPES}, optional={k: v for k, v in field_values.items()})
    return structured | JSONISH


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(events(), st.floats(0, 3)), max_size=30))
def test_no_input_crashes_the_handler_and_the_exposition_always_parses(stream):
    rig = Rig(max_series=12, max_tasks=100)
    for event, dt in stream:
        rig.handler.handle(event, rig.clock.now())
        rig.advance(dt)
    rig.advance(5)
    plain = rig.samples()  # also checks that OpenMetrics and protobuf carry the same samples
    series = rig.store.snapshot(rig.clock.now()).series.held
    assert series["task"] + series["exception"] + series["worker"] <= 12
    for (name, labels), value in plain.items():
        assert not math.isnan(value) or name.endswith("_sum"), (name, labels, value)
        for _label, label_value in labels:
            assert len(label_value) <= 256 and "\n" not in label_value
