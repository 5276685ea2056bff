"""The liveness verdict as rows: a worker's last heartbeat, its warm shutdown and what the
exporter could hear, in; up, down, lost or gone out. And the stall rule on the tick."""

import pytest

from celery_exporter.liveness import Hearing, Listening, Liveness, Verdict, verdict

T0 = 1_800_000_000.0
RULE = Liveness(worker_timeout=30.0, worker_ttl=900.0)
HEARD = Hearing(since=T0 - 100.0, heard_at=None)  # heard_at is set per row (relative to now)

A, D, L, G = Verdict.ALIVE, Verdict.DOWN, Verdict.LOST, Verdict.GONE

# (why, age of the last heartbeat or None, freq, worker-offline this long ago or None,
#  listening for, broker last heard this long ago, expected)
ROWS = [
    ("heard within the timeout", 30.0, 2.0, None, 100.0, 0.0, A),
    ("silent past the timeout, listened and heard since", 30.5, 2.0, None, 100.0, 0.0, L),
    ("silent past the timeout, not listening", 30.5, 2.0, None, None, 0.0, D),
    ("silent past the timeout, broker not heard since", 30.5, 2.0, None, 100.0, None, D),
    ("broker last heard before the deadline (a connection that died silently)", 31.0, 2.0, None, 100.0, 1.5, D),
    ("broker heard just after the deadline", 31.0, 2.0, None, 100.0, 0.5, L),
    ("listening for less than its timeout (reconnected, or a stall ended)", 40.0, 2.0, None, 29.0, 0.0, D),
    ("listening for just longer than its timeout", 40.0, 2.0, None, 30.5, 0.0, L),
    ("a long announced interval: 3 of them", 59.0, 20.0, None, 100.0, 0.0, A),
    ("a long announced interval, all 3 missed", 61.0, 20.0, None, 100.0, 0.0, L),
    ("no heartbeat known: cannot be told lost", None, None, None, 100.0, 0.0, A),
    ("draining, within the TTL", None, None, 900.0, 1000.0, 0.0, A),
    ("draining past the TTL, listened all along", None, None, 900.5, 1000.0, 0.0, L),
    ("draining past the TTL, listening only since it left", None, None, 900.5, 900.5, 0.0, L),
    ("draining past the TTL, not listened all along", None, None, 900.5, 900.0, 0.0, G),
    ("draining past the TTL, not listening", None, None, 900.5, None, 0.0, G),
    ("heartbeats known: the drain does not count", 10.0, 2.0, 1000.0, None, None, A),
]


@pytest.mark.parametrize("why,age,freq,left,listening,heard,expected", ROWS, ids=[r[0] for r in ROWS])
def test_verdict(why, age, freq, left, listening, heard, expected):
    now = T0
    hearing = Hearing(
        since=None if listening is None else now - listening,
        heard_at=None if heard is None else now - heard,
    )
    last_seen = None if age is None else now - age
    left_at = None if left is None else now - left
    assert verdict(RULE, now, last_seen, freq, left_at, hearing) is expected


@pytest.mark.parametrize("age,expected", [(30.0, A), (30.5, D), (3600.0, D)])
def test_without_hearing_nobody_is_lost(age, expected):
    """What the `up` gauge asks: up or down, never lost."""
    assert verdict(RULE, T0, T0 - age, 2.0) is expected


def test_up_is_the_same_with_or_without_hearing_on_every_row():
    """The up gauge asks without hearing; the tick asks with it: up means the same to both."""
    for why, age, freq, _left, _listening, _heard, expected in ROWS:
        if age is not None:
            alone = verdict(RULE, T0, T0 - age, freq)
            assert (alone is A) is (expected is A), why
            assert (alone is A) is RULE.is_up(T0 - age, freq, T0), why


def test_a_stall_moves_the_listening_start_to_its_end():
    listening = Listening()
    assert listening.tick(T0, None) is None  # not connected
    assert listening.tick(T0 + 0.5, T0) == T0
    assert listening.tick(T0 + 5.5, T0) == T0  # a gap of exactly 5 s is no stall
    assert listening.tick(T0 + 10.6, T0) == T0 + 10.6  # 5.1 s: a stall, heard only from now
    assert listening.tick(T0 + 11.0, T0) == T0 + 10.6
    assert listening.tick(T0 + 11.5, T0 + 11.2) == T0 + 11.2  # reconnected after the stall
    assert listening.tick(T0 + 12.0, None) is None
