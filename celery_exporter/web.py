"""HTTP: /metrics, / (status page), /-/healthy, /-/ready.

/metrics serves the collector's families (and prometheus_client's process collectors) in the
format the scraper negotiates: text 0.0.4, OpenMetrics or Prometheus protobuf (see
exposition). No request ever touches the broker.
"""

from __future__ import annotations

import html
import logging
import ssl
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any, Iterable, Iterator, List, Optional, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import gzip_accepted

from celery_exporter import __version__, diagnosis, httpserver
from celery_exporter.clock import Clock
from celery_exporter.collector import CeleryCollector, registry_families
from celery_exporter.exposition import Encoders
from celery_exporter.exposition.model import select
from celery_exporter.receiver import mask_url
from celery_exporter.settings import Settings
from celery_exporter.store import Store
from celery_exporter.store.own import ExporterSnapshot
from celery_exporter.webconfig import Authenticator, RateLimiter, Reloader, WebConfig, check_peer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)


HEALTH_PATHS = ("/-/healthy", "/-/ready")
# diagnosis problems that status_hints already words for the status page
GENERIC = (diagnosis.NOT_CONNECTED, diagnosis.NO_WORKERS)


# Chunks of a response body are sent in writes of at least this size: a family of a few
# label sets is a few hundred bytes, and a write each would be a system call each. Under
# load every write also hands the GIL to the event thread, which may keep it for the whole
# switch interval (1 ms): a typical body of a few hundred kB goes in one or two writes.
WRITE_SIZE = 1 << 18


def coalesce(chunks: Iterable[bytes], size: int = WRITE_SIZE) -> Iterator[bytes]:
    """The same bytes, small chunks joined up to about `size`; a large chunk goes as it is."""
    pending: List[bytes] = []
    held = 0
    for chunk in chunks:
        if held and held + len(chunk) > size:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending, held = [], 0
        if len(chunk) >= size:
            yield chunk
            continue
        pending.append(chunk)
        held += len(chunk)
    if held:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


def status_hints(snap: ExporterSnapshot) -> List[str]:
    """What a newcomer most likely got wrong, judged from what has (not) arrived."""
    hints = []
    if not snap.connected:
        hints.append(
            "Not connected to the broker. Check --broker-url (and credentials); the exporter "
            "keeps retrying with backoff."
        )
    task_events = sum(n for t, n in snap.events.items() if t.startswith("task-"))
    worker_events = sum(n for t, n in snap.events.items() if t.startswith("worker-"))
    if snap.connected and worker_events == 0:
        hints.append(
            "No worker events yet. Workers send heartbeats every 2 s: check that the workers "
            "use the same broker URL, virtual host / Redis DB and transport options "
            "(global_keyprefix, fanout_prefix) as the exporter."
        )
    if worker_events and task_events == 0:
        hints.append(
            "Workers are heartbeating but no task events arrived: start workers with -E "
            "(or worker_send_task_events=True), or run `celery control enable_events`."
        )
    if task_events and not snap.events.get("task-sent"):
        hints.append(
            "No task-sent events: queue_name labels fall back to the worker's only queue or "
            "'unknown'. Set task_send_sent_event=True in the config of every process that "
            "publishes tasks (clients, beat, and workers for retries and chains)."
        )
    if snap.dropped.get("series_limit"):
        hints.append("Some label sets were refused: --max-series was reached.")
    return hints


class Web:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        collector: CeleryCollector,
        process_registry: CollectorRegistry,
        clock: Clock,
    ):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.started = clock.now()
        self.collector = collector
        self.process_registry = process_registry
        self.encoders = Encoders()
        self.server: Optional[httpserver.Server] = None
        self.thread: Optional[threading.Thread] = None
        config = settings.web_config
        # the web config in use, read again when its file changes (webconfig.Reloader)
        self.web_config = (
            Reloader(config, on_error=store.exporter.count_web_config_reload_error) if config is not None else None
        )
        self.authenticator = Authenticator(config.users) if config is not None else None
        self._limiter: Optional[RateLimiter] = None
        self._limiter_lock = threading.Lock()  # one bucket, even when the first requests race

    def _config(self) -> Optional[WebConfig]:
        return self.web_config.current() if self.web_config is not None else None

    def _rate_limited(self, config: WebConfig) -> bool:
        """Over the config's rate_limit (one token bucket, replaced when the limit changes)."""
        if config.rate_limit is None:
            return False
        with self._limiter_lock:
            if self._limiter is None or self._limiter.limit != config.rate_limit:
                self._limiter = RateLimiter(config.rate_limit)
            limiter = self._limiter
        return not limiter.allow()

    def _extra_headers(self) -> Tuple[Tuple[str, str], ...]:
        """The configured headers, for the answers the HTTP server writes itself."""
        return self.web_config.last.headers if self.web_config is not None else ()

    # -- WSGI -----------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        config = self._config()
        if config is None:
            return self._route(environ, start_response)
        headers = config.headers

        def respond(status: str, response_headers: List[Tuple[str, str]], exc_info: Optional[Any] = None) -> Any:
            return start_response(status, response_headers + list(headers), exc_info)

        path = environ.get("PATH_INFO", "/")
        probe = self.settings.health_open and path in HEALTH_PATHS  # open to probes: not limited either
        if not probe and self._rate_limited(config):
            self.store.exporter.count_http_refused("rate_limit")
            respond(
                "429 Too Many Requests",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "18"), ("Retry-After", "1")],
            )
            return [b"Too Many Requests\n"]
        if config.auth_required and not probe and self.authenticator is not None:
            if self.authenticator.check(environ.get("HTTP_AUTHORIZATION"), config.users) is None:
                respond(
                    "401 Unauthorized",
                    [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("WWW-Authenticate", 'Basic realm="celery-exporter"'),
                        ("Content-Length", "13"),
                    ],
                )
                return [b"Unauthorized\n"]
        return self._route(environ, respond)

    def _route(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self.metrics(environ, start_response)
        if path == "/-/healthy":
            return self._text(start_response, "200 OK", "OK\n")
        if path == "/-/ready":
            if self.store.exporter.connected:  # one attribute: a probe never waits for the lock
                return self._text(start_response, "200 OK", "ready: connected to the broker\n")
            return self._text(start_response, "503 Service Unavailable", "not ready: not connected to the broker\n")
        if path == "/":
            body = self.status_page().encode()
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
            return [body]
        return self._text(start_response, "404 Not Found", "not found; try /metrics\n")

    def metrics(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Text 0.0.4, OpenMetrics or protobuf, as the scraper's Accept header asks; only the
        families named by `name[]` when given; gzip when accepted. Our families first, then
        the process/platform/GC collectors. The families are taken at once (one snapshot);
        the body is then encoded, compressed and sent family by family, with no
        Content-Length (the response is HTTP/1.0: it ends when the connection closes), so
        a scrape never holds its whole body; small families go out together (`coalesce`)."""
        encoder = self.encoders.for_accept(environ.get("HTTP_ACCEPT", ""))
        families = self.collector.families() + registry_families(self.process_registry)
        names = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("name[]", [])
        gzip = gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", ""))
        headers = [("Content-Type", encoder.content_type)]
        if gzip:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return coalesce(encoder.encode(select(families, names), gzip))

    @staticmethod
    def _text(start_response: StartResponse, status: str, text: str) -> Iterable[bytes]:
        body = text.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    def _learned(self, own: ExporterSnapshot, now: float) -> str:
        """What the last learning from `inspect` at a connect said, and when."""
        if not self.settings.inspect:
            return "off (--no-inspect)"
        if own.learned is None:
            return "not yet (once connected, from inspect active and reserved)"
        when, summary = own.learned
        return f"{summary} ({now - when:.0f} s ago)"

    def status_page(self) -> str:
        snap = self.store.snapshot(self.clock.now())
        own = snap.exporter
        esc = html.escape
        rows: List[Tuple[str, str]] = [
            ("Broker", mask_url(self.settings.broker_url)),
            ("Connected", "yes" if own.connected else "NO"),
            ("Broker outages", str(own.reconnects)),
            ("Uptime", f"{snap.now - self.started:.0f} s"),
            ("Last event", f"{snap.now - own.last_event:.1f} s ago" if own.last_event else "none yet"),
            ("Task label sets", str(snap.series.held["task"])),
            ("Learned at connect", self._learned(own, snap.now)),
        ]
        workers = []
        task_events = {True: "on", False: "OFF", None: "not known yet"}
        for w in sorted(snap.workers.workers, key=lambda w: w.hostname):
            workers.append(
                f"<tr><td>{esc(w.hostname)}</td><td>{'up' if w.up else 'DOWN'}</td>"
                f"<td>{snap.now - w.last_seen:.1f} s</td>"
                f"<td>{w.active if w.active is not None else ''}</td>"
                f"<td>{task_events[w.task_events]}</td>"
                f"<td>{f'{w.skew:+.2f} s' if w.skew is not None else ''}</td></tr>"
            )
        events = "".join(f"<tr><td>{esc(t)}</td><td>{n}</td></tr>" for t, n in sorted(own.events.items()))
        dropped = "".join(f"<tr><td>{esc(r)}</td><td>{n}</td></tr>" for r, n in own.dropped.items() if n)
        # the generic hints, then what the diagnosis found per worker, task name and content type
        found = [p.line() for p in diagnosis.problems(snap, self.settings) if p.kind not in GENERIC]
        hints = "".join(f"<li>{esc(h)}</li>" for h in status_hints(own) + found)
        summary = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
        worker_rows = "".join(workers) or '<tr><td colspan="6">none seen</td></tr>'
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>celery-exporter</title></head>
<body>
<h1>celery-exporter {esc(__version__)}</h1>
<p><a href="/metrics">/metrics</a> · <a href="/-/healthy">/-/healthy</a> · <a href="/-/ready">/-/ready</a></p>
<table>{summary}</table>
<h2>Hints</h2><ul>{hints or "<li>Nothing looks wrong.</li>"}</ul>
<h2>Workers</h2>
<table><tr><th>hostname</th><th>state</th><th>last heartbeat</th><th>active</th><th>task events</th>
<th>clock skew</th></tr>{worker_rows}</table>
<h2>Events received</h2><table>{events or "<tr><td>none yet</td></tr>"}</table>
<h2>Events dropped</h2><table>{dropped or "<tr><td>none</td></tr>"}</table>
</body></html>
"""

    # -- serving --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (a port in use raises OSError here) and serve in the "http" thread: bounded
        threads and read timeouts, see httpserver."""
        reloader = self.web_config
        tls = reloader is not None and reloader.last.ssl_context is not None

        def context() -> ssl.SSLContext:
            current = reloader.current() if reloader is not None else None
            assert current is not None and current.ssl_context is not None  # TLS stays on (Reloader)
            return current.ssl_context

        self.server = httpserver.Server(
            (self.settings.listen_address, self.settings.port),
            self,
            max_requests=self.settings.web_max_requests,
            read_timeout=self.settings.web_read_timeout,
            ssl_context=context if tls else None,
            check_peer=check_peer,
            extra_headers=self._extra_headers,
            on_refused=self.store.exporter.count_http_refused,
        )
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        self.thread.start()
        host, port = self.server.server_address
        scheme = "https" if tls else "http"
        auth = " with basic auth" if reloader is not None and reloader.last.auth_required else ""
        log.info(
            "serving /metrics on %s://%s:%s/metrics%s", scheme, host if ":" not in host else f"[{host}]", port, auth
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
