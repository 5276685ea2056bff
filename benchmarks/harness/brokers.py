"""The brokers a run uses: a private redis-server started for the run, or a fresh vhost on
the machine's shared RabbitMQ (whose beam.smp is moved to the generator's core for the
whole session, as redis-server runs there)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from harness.procs import free_port, on_core, stop_process

# The message TTL of the exporter's RabbitMQ queue (QUEUE_MESSAGE_TTL in
# celery_exporter/readers.py); the reference's queue gets the same, instead of Celery's
# event_queue_ttl of 5 s, so that neither drops a late event earlier than the other.
RMQ_QUEUE_TTL = 30.0

# what the run keeps of Redis' INFO stats at its end
REDIS_STATS = ("client_output_buffer_limit_disconnections", "total_commands_processed", "pubsub_patterns")


class RedisServer:
    """A private redis-server, so no other client's events reach the consumer under test."""

    def __init__(self, binary: str, core: int, workdir: str):
        self.binary, self.core, self.workdir = binary, core, workdir
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = ""
        self.admin: Any = None  # the runner's own client: the limit before, the stats after

    def start(self) -> None:
        for _attempt in range(5):
            self.port = free_port()
            self.log_path = os.path.join(self.workdir, f"redis-{self.port}.log")
            log = open(self.log_path, "w")
            cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            cmd += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
            self.proc = subprocess.Popen(
                on_core(self.core, cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
            log.close()
            if self._answers(time.monotonic() + 5):
                return
            stop_process(self.proc)
        raise RuntimeError(f"redis-server did not start; see {self.log_path}")

    def _answers(self, deadline: float) -> bool:
        while time.monotonic() < deadline and self.proc is not None and self.proc.poll() is None:
            try:
                if self.client().ping():
                    return True
            except Exception:
                time.sleep(0.05)
        return False

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def before_consumer(self) -> Dict[str, Any]:
        """Figures of the broker before the consumer starts: the pubsub output buffer limit."""
        self.admin = self.client()
        limit = self.admin.config_get("client-output-buffer-limit").get("client-output-buffer-limit")
        return {"redis_pubsub_limit": limit}

    def after_run(self) -> Dict[str, Any]:
        """Redis' INFO stats at the end (on the client made before the consumer started)."""
        if self.admin is None:
            return {}
        try:
            info = self.admin.info("stats")
        except Exception:
            return {}
        return {"redis_stats": {k: info[k] for k in REDIS_STATS if k in info}}

    def log_text(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)


class RabbitVhost:
    """A fresh vhost on the shared local RabbitMQ, so that no other client's events (tests)
    reach the consumer and no queue or exchange carries over: the analogue of the private
    redis-server. RabbitMQ itself is one shared beam.smp process, not started here (main moves it
    to the generator's core for the run, unless --no-pin-rabbitmq).
    rabbitmqctl runs pinned to the generator's core, at nice 10 (the generator comes first)."""

    def __init__(self, ctl: str, base_url: str, core: int, tag: str):
        self.ctl_path, self.base_url, self.core = ctl, base_url.rstrip("/"), core
        safe_tag = re.sub(r"[^A-Za-z0-9_.-]", "-", tag)
        self.vhost = f"celery-exporter-bench-{safe_tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.created = False
        self.ctl_cpu_s = 0.0  # CPU of every rabbitmqctl run (utime + stime of the child)
        self.ctl_calls = 0
        self._lock = threading.Lock()

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """Runs `rabbitmqctl -q ARGS`; its output (raises on failure). Reaped with wait4 so
        that the CLI's own CPU (it boots an Erlang VM, ~0.4 s) is accounted."""
        cmd = ["nice", "-n", "10", *on_core(self.core, [self.ctl_path, "-q", *args])]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            out = proc.stdout.read() if proc.stdout else ""
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.stdout:
            proc.stdout.close()
        with self._lock:
            self.ctl_cpu_s += usage.ru_utime + usage.ru_stime
            self.ctl_calls += 1
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}): {out.strip()[:300]}")
        return out

    def start(self) -> None:
        self.ctl("add_vhost", self.vhost)
        self.created = True
        try:
            self.ctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        except Exception:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"{self.base_url}/{urllib.parse.quote(self.vhost, safe='')}"

    def rows(self, *args: str) -> List[List[str]]:
        out = self.ctl(*args, "--no-table-headers")
        return [line.split("\t") for line in out.splitlines() if line.strip()]

    def queues(self) -> Dict[str, Dict[str, int]]:
        """{queue: {messages, message_bytes, consumers}} in this vhost."""
        out = {}
        for row in self.rows("list_queues", "-p", self.vhost, "name", "messages", "message_bytes", "consumers"):
            if len(row) == 4:
                name, messages, nbytes, consumers = row
                out[name] = {"messages": int(messages), "message_bytes": int(nbytes), "consumers": int(consumers)}
        return out

    def event_queues(self, exchange: str = "celeryev") -> List[str]:
        """Queues bound to the event exchange in this vhost."""
        rows = self.rows("list_bindings", "-p", self.vhost, "source_name", "destination_name", "destination_kind")
        return sorted({r[1] for r in rows if len(r) == 3 and r[0] == exchange and r[2] == "queue"})

    def consumer_queues(self) -> List[str]:
        """Queues bound to celeryev with at least one consumer."""
        bound = self.event_queues()
        queues = self.queues()
        return [q for q in bound if queues.get(q, {}).get("consumers", 0) > 0]

    def version(self) -> Optional[str]:
        try:
            return self.ctl("version").strip()
        except Exception:
            return None

    def stop(self) -> None:
        """Deletes the vhost (and with it every queue and exchange the run declared)."""
        if not self.created:
            return
        try:
            self.ctl("delete_vhost", self.vhost)
            self.created = False
        except Exception as exc:
            print(f"   WARNING: could not delete RabbitMQ vhost {self.vhost}: {exc}", file=sys.stderr)

    def before_consumer(self) -> Dict[str, Any]:
        return {"rabbitmq_vhost": self.vhost}

    def after_run(self) -> Dict[str, Any]:
        return {}


Broker = Union[RedisServer, RabbitVhost]


def make_broker(args: Any, broker: str, tag: str, workdir: str) -> Broker:
    """A fresh broker for one run (not started)."""
    if broker == "rabbitmq":
        return RabbitVhost(args.rabbitmqctl, args.rabbitmq_url, args.generator_core, tag)
    return RedisServer(args.redis_server, args.generator_core, workdir)


def pin_rabbitmq(core: int) -> Tuple[Dict[int, Set[int]], str]:
    """Move every thread of the local RabbitMQ (beam.smp) to `core`, so that the broker does not
    run on the consumer's core: on Redis the broker shares the generator's core too. Returns
    each thread's affinity before (for unpin), or {} and why not."""
    try:
        found = subprocess.run(["pgrep", "-x", "beam.smp"], capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split()]
    except OSError as exc:
        return {}, f"pgrep: {exc}"
    if not pids:
        return {}, "no local beam.smp process"
    before: Dict[int, Set[int]] = {}
    try:
        for pid in pids:
            for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                try:
                    before[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, {core})
                except ProcessLookupError:  # the thread ended meanwhile
                    before.pop(tid, None)
    except OSError as exc:  # e.g. another user's process
        unpin(before)
        return {}, f"{type(exc).__name__}: {exc}"
    return before, ""


def unpin(before: Dict[int, Set[int]]) -> None:
    for tid, cores in before.items():
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # ended meanwhile
            pass
