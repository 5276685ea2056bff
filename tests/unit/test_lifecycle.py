"""The transition table itself: every (event, state) pair has one defined outcome, and a walk
through every event from a new task reaches every state and every row, and no pair that the
table says cannot happen."""

from collections import deque

import pytest

from celery_exporter import catalogue, lifecycle
from celery_exporter.events import TaskEvent
from celery_exporter.lifecycle import DIRECT, KIND_OF_EVENT, NEVER, RULES, STEPS, TABLE, Effect, Found, Kind, State
from celery_exporter.tasks import TaskRecord

PAIRS = [(kind, state) for kind in Kind for state in State]
NEVER_PAIRS = {(kind, state) for kind, states, _why in NEVER for state in states}
# the kinds a task event can have (the others come from elsewhere: cancelled, lost, evicted,
# learned)
TASK_EVENT_KINDS = set(KIND_OF_EVENT.values()) | {
    Kind.RECEIVED_AGAIN,
    Kind.STARTED_LATE,
    Kind.TERMINAL_AGAIN,
    Kind.RETRIED_LATE,
}
MAX_ATTEMPT = 2  # retries explored


def test_every_pair_has_one_defined_outcome():
    assert set(TABLE) | NEVER_PAIRS == set(PAIRS)
    assert not set(TABLE) & NEVER_PAIRS
    assert sum(len(states) for _k, states, _n, _e in RULES) == len(TABLE)  # no pair in two rows
    assert sum(len(states) for _k, states, _why in NEVER) == len(NEVER_PAIRS)


def test_the_compiled_table_is_the_table():
    for (kind, state), (next_state, effects) in TABLE.items():
        assert STEPS[kind][state] == (next_state, effects)
    for kind, state in NEVER_PAIRS:
        assert STEPS[kind][state] == (state, Effect.NONE)  # inert, should it ever happen
    for index, state_name in enumerate(catalogue.TASK_STATES):
        kind = KIND_OF_EVENT["task-" + state_name]
        assert DIRECT[index] == (None if kind in lifecycle.CLASSIFIED else STEPS[kind])


def test_a_task_event_is_counted_unless_it_is_a_duplicate():
    """What the handler relies on: it counts every task event whose row is not DUPLICATE."""
    for (kind, state), (_next, effects) in TABLE.items():
        if kind in TASK_EVENT_KINDS:
            assert bool(effects & Effect.COUNT) != bool(effects & Effect.DUPLICATE), (kind, state)
        else:
            assert not effects & (Effect.COUNT | Effect.DUPLICATE), (kind, state)


def test_runs_start_only_from_unfinished_states_and_end_only_from_running():
    for (kind, state), (next_state, effects) in TABLE.items():
        if effects & Effect.START_RUN:
            # a task-started, or a run `inspect active` reported (learned: kept if current)
            assert kind in (Kind.STARTED, Kind.LEARNED) and state in lifecycle.UNFINISHED
            assert next_state is State.RUNNING
        if effects & Effect.END_RUN:
            assert state is State.RUNNING and next_state is not State.RUNNING
        if next_state is not state:
            assert effects & (Effect.START_RUN | Effect.END_RUN | Effect.FINISH), (kind, state)
        if effects & Effect.FINISH:
            assert state in lifecycle.UNFINISHED and next_state in lifecycle.ENDED


def test_reservations_are_made_by_receipts_and_end_with_the_task():
    """A task is reserved only at a task-received of an unfinished task, and a row that ends
    the task (FINISH) or starts its run also ends its reservation, so that no reservation
    outlives its record (an evicted one is forgotten with it)."""
    for (kind, state), (_next, effects) in TABLE.items():
        if effects & Effect.RESERVE:
            assert kind in (Kind.RECEIVED, Kind.RECEIVED_AGAIN, Kind.LEARNED_RESERVED)
            assert state in lifecycle.UNFINISHED
        if effects & (Effect.FINISH | Effect.START_RUN):
            assert effects & Effect.UNRESERVE, (kind, state)
        if kind is Kind.EVICTED:
            assert effects & Effect.FORGET


# -- the walk ---------------------------------------------------------------------------------


def _event(etype):
    return TaskEvent(etype, catalogue.EVENT_STATE[etype], "u", 0.0, "w1@h")


# what can come to a task: each task event type (with what attempts.learn may find in it),
# a new attempt published (learn raises record.attempt), task-cancelled, its worker's loss,
# its eviction, `inspect active` reporting it running, `inspect reserved` listing it
INPUTS = (
    [("event", etype, None) for etype in KIND_OF_EVENT]
    + [("event", "task-received", Found.REDELIVERY), ("event", "task-started", Found.PREVIOUS_ATTEMPT)]
    + [("new attempt", None, None), ("cancelled", None, None), ("lost", None, None), ("evicted", None, None)]
    + [("learned", None, None), ("learned reserved", None, None)]
)


def _fields(record):
    return (record.state, record.done, record.attempt, record.run_attempt, record.retried_seen, record.interrupted)


def _record(fields):
    record = TaskRecord("u")
    (record.state, record.done, record.attempt, record.run_attempt, record.retried_seen, record.interrupted) = fields
    return record


def _apply(record, what, etype, found):
    """One input, applied as the handler applies the table (label set admitted); returns
    the (kind, state) pair it looked up, or None when nothing was looked up."""
    state = State(record.state)
    if what == "new attempt":
        record.attempt += 1
        return None
    if what == "lost":
        kind = Kind.LOST_AGAIN if record.interrupted else Kind.LOST
        lifecycle.lost(record)
        return kind, state
    if what == "learned":
        lifecycle.learned(record)
        return Kind.LEARNED, state
    if what == "learned reserved":
        lifecycle.learned_reserved(record)
        return Kind.LEARNED_RESERVED, state
    if what in ("cancelled", "evicted"):
        kind = Kind.CANCELLED if what == "cancelled" else Kind.EVICTED
        record.state = STEPS[kind][record.state][0]
        return kind, state
    kind = Kind(lifecycle.classify(record, _event(etype), found))
    next_state, effects = STEPS[kind][record.state]
    record.state = next_state
    if effects & Effect.START_RUN:
        record.run_attempt = record.attempt
    return kind, state


def _walk():
    """Every lifecycle configuration reachable from a new record (attempts up to MAX_ATTEMPT,
    task-retried counts up to MAX_ATTEMPT + 2), and the pairs looked up on the way."""
    start = _fields(TaskRecord("u"))
    seen, pairs, todo = {start}, set(), deque([start])
    while todo:
        fields = todo.popleft()
        for what, etype, found in INPUTS:
            record = _record(fields)
            pair = _apply(record, what, etype, found)
            if pair is not None:
                pairs.add(pair)
            after = _fields(record)
            if record.attempt <= MAX_ATTEMPT and record.retried_seen <= MAX_ATTEMPT + 2 and after not in seen:
                seen.add(after)
                todo.append(after)
    return seen, pairs


SEEN, WALKED = _walk()


def test_every_state_is_reachable():
    assert {State(fields[0]) for fields in SEEN} == set(State)


def test_every_row_is_reached_and_no_pair_that_cannot_happen():
    assert WALKED & NEVER_PAIRS == set()
    assert WALKED == set(TABLE)


def test_direct_rows_need_no_classifying():
    """For the event types the handler looks up without `classify`, classify would find the
    same kind and remember nothing."""
    for fields in SEEN:
        for index, state_name in enumerate(catalogue.TASK_STATES):
            if DIRECT[index] is None:
                continue
            record = _record(fields)
            etype = "task-" + state_name
            assert lifecycle.classify(record, _event(etype), None) == KIND_OF_EVENT[etype]
            assert _fields(record) == fields


# -- rows: events in, state and effects out ---------------------------------------------------

E = Effect
# (events from a new task, the state after them, the effects of the last one)
ROWS = [
    (["task-sent", "task-received"], State.PENDING, E.COUNT | E.RESERVE),
    (["task-received", "task-started"], State.RUNNING, E.COUNT | E.START_RUN | E.UNRESERVE),
    (["task-started", "task-succeeded"], State.FINISHED, E.FINISH | E.END_RUN | E.UNRESERVE | E.COUNT),
    (["task-started", "task-failed", "task-failed"], State.FINISHED, E.DUPLICATE),  # hard time limit, 5.7
    (["task-started", "task-failed", "task-rejected"], State.FINISHED, E.UNRESERVE | E.COUNT),
    (["task-started", "task-failed", "task-revoked"], State.FINISHED, E.UNRESERVE | E.COUNT),  # another type
    (["task-revoked", "task-revoked"], State.FINISHED_UNSTARTED, E.DUPLICATE),
    (["task-received", "task-revoked"], State.FINISHED_UNSTARTED, E.FINISH | E.UNRESERVE | E.COUNT),
    (["task-received", "task-rejected"], State.PENDING, E.UNRESERVE | E.COUNT),
    (["task-succeeded", "task-started"], State.FINISHED_UNSTARTED, E.UNRESERVE | E.COUNT),  # starts no run
    (["task-succeeded", "task-received"], State.FINISHED_UNSTARTED, E.COUNT),  # reserves nothing
    (["task-started", "task-retried"], State.STOPPED, E.END_RUN | E.COUNT),  # keeps the next attempt's
    (["task-started", "task-rejected"], State.STOPPED, E.END_RUN | E.UNRESERVE | E.COUNT),
    (["task-started", "task-retried", "task-received"], State.STOPPED, E.COUNT | E.RESERVE),
    (["task-started", "task-retried", "task-started"], State.RUNNING, E.COUNT | E.START_RUN | E.UNRESERVE),
    (["task-started", "task-retried", "task-succeeded"], State.FINISHED, E.FINISH | E.UNRESERVE | E.COUNT),
    (["task-retried"], State.PENDING, E.COUNT),  # no run to end
    (["task-started", "task-started"], State.RUNNING, E.COUNT | E.START_RUN | E.UNRESERVE),  # elsewhere
]


@pytest.mark.parametrize("events,state,effects", ROWS, ids=[" ".join(r[0]) for r in ROWS])
def test_rows(events, state, effects):
    record = TaskRecord("u")
    for etype in events:
        kind = lifecycle.classify(record, _event(etype), None)
        next_state, last = STEPS[kind][record.state]
        if last & E.DUPLICATE:
            break
        record.state = next_state
        if last & E.START_RUN:
            record.run_attempt = record.attempt
    assert (State(record.state), lifecycle.effect_names(last)) == (state, lifecycle.effect_names(effects))


def test_a_late_retried_of_the_attempt_before_keeps_the_run():
    """Attempt 1 runs (its task-sent raised the attempt) when attempt 0's task-retried comes."""
    record = TaskRecord("u")
    record.state = lifecycle.PENDING
    record.attempt = 1
    for etype, found, kind, state in [
        ("task-started", None, Kind.STARTED, State.RUNNING),
        ("task-retried", None, Kind.RETRIED_LATE, State.RUNNING),  # attempt 0's: the 1st seen
        ("task-retried", None, Kind.RETRIED, State.STOPPED),  # attempt 1's: the 2nd
    ]:
        got = lifecycle.classify(record, _event(etype), found)
        assert got == kind
        next_state, effects = STEPS[got][record.state]
        record.state = next_state
        if effects & E.START_RUN:
            record.run_attempt = record.attempt
        assert record.state == state


def test_interrupted_once_per_task_id_and_also_when_forgotten():
    record = TaskRecord("u")
    record.state = State.RUNNING
    assert lifecycle.lost(record) == E.INTERRUPTED
    assert lifecycle.lost(record) == E.NONE
    assert record.state == State.RUNNING  # it may run again elsewhere
    assert lifecycle.lost(None) == E.INTERRUPTED


def test_a_learned_run_starts_from_unfinished_states_and_keeps_a_current_runs_attempt():
    record = TaskRecord("u")
    record.attempt = 2
    assert lifecycle.learned(record) == E.START_RUN | E.UNRESERVE
    assert (record.state, record.run_attempt) == (State.RUNNING, 2)
    record.attempt = 3  # a next attempt published; the reply cannot tell which one runs
    assert lifecycle.learned(record) == E.START_RUN | E.UNRESERVE  # (the store keeps a run it holds)
    assert record.run_attempt == 2
    for ended in (State.FINISHED, State.FINISHED_UNSTARTED):
        record.state = ended
        assert lifecycle.learned(record) == E.NONE  # its terminal event came after the reply
        assert record.state == ended


def test_a_learned_reservation_only_for_a_task_neither_started_nor_ended():
    record = TaskRecord("u")
    assert lifecycle.learned_reserved(record) == E.RESERVE  # its task-received was missed
    assert record.state == State.PENDING
    for state in (State.STOPPED,):  # a retry's next attempt, received again
        record.state = state
        assert lifecycle.learned_reserved(record) == E.RESERVE
    for later in (State.RUNNING, State.FINISHED, State.FINISHED_UNSTARTED):  # the reply is older
        record.state = later
        assert lifecycle.learned_reserved(record) == E.NONE
        assert record.state == later


def test_effect_names():
    assert lifecycle.effect_names(E.COUNT | E.START_RUN) == ["COUNT", "START_RUN"]
    assert lifecycle.effect_names(E.NONE) == []
