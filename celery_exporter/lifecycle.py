"""A task's run, as states and a transition table: the one place where the running,
interrupted, redelivered and duplicate-terminal rules are written.

Every task id in the uuid map (tasks.py) is in one of five states:

    PENDING             no run started yet: published, received (prefetched), or its events
                        still held for their labels
    RUNNING             its task-started started a run in the store's running set, and no event
                        of its own ended it (the loss of its worker, or a heartbeat of it that
                        says nothing runs, may have taken the run out of the set meanwhile)
    STOPPED             its run ended without the task ending: task-retried (the next attempt
                        comes under the same id), task-rejected (it may be requeued),
                        task-cancelled (the broker delivers it again); it may run again
    FINISHED            a terminal event (succeeded, failed, revoked) was counted after a run
                        had started
    FINISHED_UNSTARTED  a terminal event was counted and no run was ever started (revoked
                        before it started, or the terminal event arrived before task-started)

               task-started                   task-succeeded, -failed, -revoked
    PENDING ---------------------> RUNNING -----------------------------------> FINISHED
       |                           |     ^                                        ^
       |         task-retried,     |     |  task-started (the next attempt,       |
       |         task-rejected,    |     |  a redelivery)                         |
       |         task-cancelled    v     |                                        |
       |                           STOPPED ---------------------------------------+
       |                                      task-succeeded, -failed, -revoked
       |
       +--- task-succeeded, -failed, -revoked ---> FINISHED_UNSTARTED

Any other event leaves the state as it is (a task-started after a terminal event starts no
run; a lost worker or an evicted record changes no state).

Besides events, `inspect active` (learned.py: at start and after a reconnect of the event
stream) reports tasks that run: LEARNED starts a run for an unfinished task, keeping the one
the store holds if its task-started came first, and nothing for a finished one (its terminal
event came after the reply was made). It counts no event: a learned task's own events later
move it as if its task-started had been seen, so each is counted once. `inspect reserved`
reports tasks received and not started: LEARNED_RESERVED reserves an unfinished task that is
not running (a task-received missed while the exporter was not listening), and does nothing
once its task-started or its end was seen (the reply was older than them).

The event that moves a task is one of the `Kind`s below: its event type, refined by what
attempts.learn found (a task-received of an attempt already received is a redelivery; a
task-started older than the current attempt's publication belongs to the attempt before a
retry) and by what this module remembers per task (`classify`):

- a terminal event of a type already counted for the task id is TERMINAL_AGAIN: dropped as a
  duplicate (Celery 5.7 sends two task-failed for one hard time limit; redeliveries repeat
  task-revoked). Another terminal type is still counted (a task-rejected or task-revoked may
  follow a task-failed);
- a task-retried ends the run only if it is the retry of the running attempt: attempt N's
  task-retried is the (N+1)-th one counted while a run is current. An older attempt's
  task-retried can arrive after the next attempt's task-started (the pool child publishes the
  retry at once, the worker sends task-retried from its buffer later): RETRIED_LATE;
- a run cut off by its worker's loss (no heartbeat for the worker timeout while the exporter
  listened, or a warm shutdown that never ended) or by a restart under the same name is
  counted as interrupted once per task id: LOST, then LOST_AGAIN. The state does not change:
  the task may run again elsewhere (a redelivery), and ending a run that is gone is a no-op.
  A task id already forgotten is counted too (`lost(None)`): its displaced run outlived it.

`TABLE` says, for every (kind, state) that can happen, the next state and the effects the
handler applies:

    COUNT        count the event under the task's label set, with the observations it
                 completes (runtime, waits); refused when --max-series is reached
    FINISH       the task ended: remembered for the finished grace (to recognise a duplicate
                 terminal event), then forgotten
    START_RUN    add a run to the running set (worker, label set, start); for LEARNED,
                 only if the set holds none of the task on that worker
    END_RUN      remove the task's run from the running set
    REDELIVERED  count celery_task_redelivered_total
    DUPLICATE    drop the event as a duplicate (celery_exporter_events_dropped_total)
    INTERRUPTED  count celery_task_interrupted_total
    FORGET       the record was evicted from the full uuid map: its run, displaced run and
                 reservation go, uncounted (never interrupted)
    RESERVE      the task is reserved by the worker that sent the event (received, not
                 started: celery_worker_tasks_reserved), unless it waits for an ETA; for
                 LEARNED_RESERVED, by the worker that listed it
    UNRESERVE    the task is no longer reserved by any worker (it started, ended, or was
                 rejected); a task-retried keeps the reservation of the next attempt, whose
                 task-received can come before it

The handler applies them in this order: DUPLICATE (and nothing else), FINISH, END_RUN and
UNRESERVE, the next state, COUNT; only if COUNT admitted the label set: the exception,
START_RUN (with the move to RUNNING: a refused task-started starts no run), REDELIVERED,
RESERVE. A worker's reservations also go when it sends worker-offline, restarts, or is lost
(the broker gives its prefetched messages to another worker, whose task-received reserves
them there).

Pairs that cannot happen (a duplicate before any terminal event, a late task-retried while no
run is current) are listed in `NEVER` with the reason; tests/unit/test_lifecycle.py walks the
table: every pair is in exactly one of the two, and every state and row is reachable.

On every task event the handler reads a compiled copy of the table, STEPS (tuples indexed by
plain ints: IntEnum operators and class attributes cost more than the lookup itself), and
calls `classify` only for the event types whose kind is not their type alone (DIRECT).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from celery_exporter import catalogue

if TYPE_CHECKING:
    from celery_exporter.events import TaskEvent
    from celery_exporter.tasks import TaskRecord


class Found(enum.Enum):
    """What attempts.learn finds out about a task event from the task's attempts (None when
    nothing): the input that tells RECEIVED_AGAIN and STARTED_LATE from their event types."""

    REDELIVERY = "redelivery"  # task-received again for the same attempt, under the same name
    PREVIOUS_ATTEMPT = "previous attempt"  # task-started of the attempt before a retry, late


class State(enum.IntEnum):
    PENDING = 0
    RUNNING = 1
    STOPPED = 2
    FINISHED = 3
    FINISHED_UNSTARTED = 4


class Kind(enum.IntEnum):
    """An event in a task's lifecycle (see the module docstring for how one is told)."""

    SENT = 0  # task-sent
    RECEIVED = 1  # task-received
    RECEIVED_AGAIN = 2  # task-received for an attempt received before, under the same name
    STARTED = 3  # task-started
    STARTED_LATE = 4  # task-started of the attempt before a retry, arriving after the retry
    TERMINAL = 5  # task-succeeded, task-failed, task-revoked: the first of its type
    TERMINAL_AGAIN = 6  # a terminal event of a type already counted for the task id
    RETRIED = 7  # task-retried (of the running attempt, when a run is current)
    RETRIED_LATE = 8  # task-retried of an attempt before the running one
    REJECTED = 9  # task-rejected
    CANCELLED = 10  # task-cancelled
    LOST = 11  # its run was cut off by its worker's loss or restart
    LOST_AGAIN = 12  # the same, for a task id already counted as interrupted
    EVICTED = 13  # its record was evicted from the full uuid map
    LEARNED = 14  # `inspect active` reported it running (at start, after a reconnect: learned.py)
    LEARNED_RESERVED = 15  # `inspect reserved` reported it received, not started (learned.py)


# the kind of each task event type before `classify` looks closer
KIND_OF_EVENT = {
    "task-sent": Kind.SENT,
    "task-received": Kind.RECEIVED,
    "task-started": Kind.STARTED,
    "task-succeeded": Kind.TERMINAL,
    "task-failed": Kind.TERMINAL,
    "task-retried": Kind.RETRIED,
    "task-rejected": Kind.REJECTED,
    "task-revoked": Kind.TERMINAL,
}
# what `classify` tells apart from the event type alone (besides what attempts.learn found)
CLASSIFIED = (Kind.TERMINAL, Kind.RETRIED)


class Effect:
    """What the handler does for a row: bits of an int (see the module docstring)."""

    NONE = 0
    COUNT = 1
    FINISH = 2
    START_RUN = 4
    END_RUN = 8
    REDELIVERED = 16
    DUPLICATE = 32
    INTERRUPTED = 64
    FORGET = 128
    RESERVE = 256
    UNRESERVE = 512


def effect_names(effects: int) -> List[str]:
    """The names of the bits set in `effects`, in declaration order."""
    return [name for name, bit in vars(Effect).items() if name.isupper() and bit and effects & bit]


S, K, E = State, Kind, Effect  # short names for the table
ANY = tuple(State)
UNFINISHED = (S.PENDING, S.RUNNING, S.STOPPED)
ENDED = (S.FINISHED, S.FINISHED_UNSTARTED)
NOT_RUNNING = (S.PENDING, S.STOPPED, S.FINISHED, S.FINISHED_UNSTARTED)
SAME = None  # as next state: the state does not change

Row = Tuple[Kind, Tuple[State, ...], Optional[State], int]

# fmt: off
RULES: Sequence[Row] = (
    # event            in states                  next state              effects
    (K.SENT,           ANY,                       SAME,                   E.COUNT),
    (K.RECEIVED,       UNFINISHED,                SAME,                   E.COUNT | E.RESERVE),
    (K.RECEIVED,       ENDED,                     SAME,                   E.COUNT),
    (K.RECEIVED_AGAIN, UNFINISHED,                SAME,                   E.COUNT | E.REDELIVERED | E.RESERVE),
    (K.RECEIVED_AGAIN, ENDED,                     SAME,                   E.COUNT | E.REDELIVERED),
    (K.STARTED,        UNFINISHED,                S.RUNNING,              E.COUNT | E.START_RUN | E.UNRESERVE),
    (K.STARTED,        ENDED,                     SAME,                   E.COUNT | E.UNRESERVE),
    (K.STARTED_LATE,   ANY,                       SAME,                   E.COUNT),
    (K.TERMINAL,       (S.PENDING,),              S.FINISHED_UNSTARTED,   E.FINISH | E.UNRESERVE | E.COUNT),
    (K.TERMINAL,       (S.RUNNING,),              S.FINISHED,             E.FINISH | E.END_RUN | E.UNRESERVE | E.COUNT),
    (K.TERMINAL,       (S.STOPPED,),              S.FINISHED,             E.FINISH | E.UNRESERVE | E.COUNT),
    (K.TERMINAL,       ENDED,                     SAME,                   E.UNRESERVE | E.COUNT),
    (K.TERMINAL_AGAIN, ENDED,                     SAME,                   E.DUPLICATE),
    (K.RETRIED,        (S.RUNNING,),              S.STOPPED,              E.END_RUN | E.COUNT),
    (K.RETRIED,        NOT_RUNNING,               SAME,                   E.COUNT),
    (K.RETRIED_LATE,   (S.RUNNING,),              SAME,                   E.COUNT),
    (K.REJECTED,       (S.RUNNING,),              S.STOPPED,              E.END_RUN | E.UNRESERVE | E.COUNT),
    (K.REJECTED,       NOT_RUNNING,               SAME,                   E.UNRESERVE | E.COUNT),
    (K.CANCELLED,      (S.RUNNING,),              S.STOPPED,              E.END_RUN),
    (K.CANCELLED,      NOT_RUNNING,               SAME,                   E.NONE),
    (K.LOST,           ANY,                       SAME,                   E.INTERRUPTED),
    (K.LOST_AGAIN,     ANY,                       SAME,                   E.NONE),
    (K.EVICTED,        ANY,                       SAME,                   E.FORGET),
    (K.LEARNED,        (S.PENDING, S.STOPPED),    S.RUNNING,              E.START_RUN | E.UNRESERVE),
    (K.LEARNED,        (S.RUNNING,),              SAME,                   E.START_RUN | E.UNRESERVE),
    (K.LEARNED,        ENDED,                     SAME,                   E.NONE),
    (K.LEARNED_RESERVED, (S.PENDING, S.STOPPED),  SAME,                   E.RESERVE),
    (K.LEARNED_RESERVED, (S.RUNNING,) + ENDED,    SAME,                   E.NONE),
)
# fmt: on

# (kind, states, why the classification never gives that pair)
NEVER: Sequence[Tuple[Kind, Tuple[State, ...], str]] = (
    (K.TERMINAL_AGAIN, UNFINISHED, "a terminal type already counted means the task is finished"),
    (K.RETRIED_LATE, NOT_RUNNING, "a task-retried is told late only while a run is current"),
)


def _expand() -> Dict[Tuple[Kind, State], Tuple[State, int]]:
    table: Dict[Tuple[Kind, State], Tuple[State, int]] = {}
    for kind, states, next_state, effects in RULES:
        for state in states:
            if (kind, state) in table:
                raise ValueError(f"two rows for {kind.name} in {state.name}")
            table[(kind, state)] = (state if next_state is None else next_state, effects)
    return table


# (kind, state) -> (next state, effects): the rules, one entry per pair they define
TABLE = _expand()

Step = Tuple[int, int]  # (next state, effects), as plain ints


def _compile() -> Tuple[Tuple[Step, ...], ...]:
    """TABLE as tuples indexed by [kind][state]; a NEVER pair keeps its state and does nothing."""
    return tuple(
        tuple(
            (int(TABLE[(kind, state)][0]), TABLE[(kind, state)][1]) if (kind, state) in TABLE else (int(state), 0)
            for state in State
        )
        for kind in Kind
    )


# the table for the handler: STEPS[kind][state] = (next state, effects), plain ints
STEPS = _compile()

PENDING = int(S.PENDING)  # a new record's state
FINISHED_STATES = frozenset(int(state) for state in ENDED)

_RUNNING, _TERMINAL, _TERMINAL_AGAIN = int(S.RUNNING), int(K.TERMINAL), int(K.TERMINAL_AGAIN)
_RETRIED, _RETRIED_LATE = int(K.RETRIED), int(K.RETRIED_LATE)
_EVENT_KIND = tuple(int(KIND_OF_EVENT["task-" + state]) for state in catalogue.TASK_STATES)  # by event.state
_FOUND_KIND = {Found.REDELIVERY: int(K.RECEIVED_AGAIN), Found.PREVIOUS_ATTEMPT: int(K.STARTED_LATE)}
# For the hot path, by event.state: the table's rows (by state) of a task event type whose
# kind is its type alone when attempts.learn found nothing; None where `classify` must look.
DIRECT: Tuple[Optional[Tuple[Step, ...]], ...] = tuple(
    None if KIND_OF_EVENT["task-" + state] in CLASSIFIED else STEPS[KIND_OF_EVENT["task-" + state]]
    for state in catalogue.TASK_STATES
)


def classify(record: TaskRecord, event: TaskEvent, found: Optional[Found]) -> int:
    """The Kind (a plain int) of a task event whose labels are fixed, for this record, which
    remembers what the next classification needs: the terminal types counted, and how many
    task-retried events came while a run was current."""
    if found is not None:
        return _FOUND_KIND[found]
    kind = _EVENT_KIND[event.state]
    if kind == _TERMINAL:
        bit = 1 << event.state
        if record.done & bit:
            return _TERMINAL_AGAIN
        record.done |= bit
    elif kind == _RETRIED and record.state == _RUNNING:
        record.retried_seen += 1
        if record.retried_seen <= record.run_attempt:
            return _RETRIED_LATE
    return kind


def learned(record: TaskRecord) -> int:
    """The effects of `inspect active` reporting the task running, for its record: a run
    (kept as it is if the store holds one of it on that worker already: the task-started
    before the reply) unless a terminal event came first (the reply was older than it).
    Moves the record's state; nothing is counted."""
    next_state, effects = STEPS[K.LEARNED][record.state]
    if next_state != record.state:
        record.state = next_state
        record.run_attempt = record.attempt  # (a run current already keeps its attempt)
    return effects


def learned_reserved(record: TaskRecord) -> int:
    """The effects of `inspect reserved` listing the task, for its record: a reservation
    unless its run started or it ended (the reply was older than those events)."""
    return STEPS[K.LEARNED_RESERVED][record.state][1]


def lost(record: Optional[TaskRecord]) -> int:
    """The effects of a run cut off by its worker's loss or restart, for the task's record,
    which remembers that it was counted. None: the task id was forgotten since (a displaced
    run outlives its finished record): counted."""
    if record is None:
        return Effect.INTERRUPTED
    kind = K.LOST_AGAIN if record.interrupted else K.LOST
    record.interrupted = True
    return STEPS[kind][record.state][1]
