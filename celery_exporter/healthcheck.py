"""`celery-exporter healthcheck`: asks a running exporter's /-/healthy (or /-/ready) the way
its own configuration says to reach it (the image's HEALTHCHECK runs it, and the chart's
probes when the web config requires client certificates).

It reads the exporter's own options (listen address, port, web config file, whether the
probes stay open under basic auth) from the same flags and environment variables, so it
follows the exporter wherever they take it: HTTPS when the web config turns TLS on. The
certificate is not checked against a CA (a probe reaches 127.0.0.1, which no certificate
names): the one the server presents must be the web config's own cert_file (or inline cert). When the web
config requires client certificates, the server's own certificate and key are presented,
which passes when the client CA also issued them. The web config holds only bcrypt hashes,
so with basic auth on and the probes closed (--no-web-health-open) a 401 is the answer
expected from a serving exporter, and counts as healthy; so does a 429 when the web config's
rate_limit applies to the closed probes too.
"""

from __future__ import annotations

import http.client
import ssl
from typing import NamedTuple, Optional, Tuple, Union

from celery_exporter.webconfig import WebConfig, load_chain

PATH = "/-/healthy"
READY_PATH = "/-/ready"


class Target(NamedTuple):
    """The exporter's options the check reads (those of Settings of the same names)."""

    listen_address: str
    port: int
    web_config: Optional[WebConfig]
    health_open: bool


def target_host(listen_address: str) -> str:
    """Where to connect for a listen address: the loopback address for the wildcards."""
    if listen_address in ("", "0.0.0.0"):
        return "127.0.0.1"
    if listen_address == "::":
        return "::1"
    return listen_address


def client_context(config: Optional[WebConfig]) -> Optional[ssl.SSLContext]:
    """A TLS client context when the web config turns TLS on, else None."""
    if config is None or config.ssl_context is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the presented certificate is compared with cert_file instead
    if config.ssl_context.verify_mode != ssl.CERT_NONE and config.server_pem is not None:
        load_chain(context, *config.server_pem, config.server_files)
    return context


def configured_certificate(config: WebConfig) -> Optional[bytes]:
    """The DER bytes of the first certificate of the web config's cert_file (or cert)."""
    if config.server_pem is None:
        return None
    text = config.server_pem[0]
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return None
    return ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)])


def check(settings: Target, timeout: float, path: str = PATH) -> Tuple[bool, str]:
    """(healthy, one line saying what was asked and what answered)."""
    host, port = target_host(settings.listen_address), settings.port
    config = settings.web_config
    context = client_context(config)
    url = f"{'https' if context else 'http'}://{f'[{host}]' if ':' in host else host}:{port}{path}"
    connection: Union[http.client.HTTPConnection, http.client.HTTPSConnection]
    if context is not None:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.connect()
        if config is not None and isinstance(connection.sock, ssl.SSLSocket):
            if connection.sock.getpeercert(binary_form=True) != configured_certificate(config):
                return False, f"{url}: the server presents another certificate than the web config's cert_file"
        connection.request("GET", path)
        response = connection.getresponse()
        response.read(1024)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    finally:
        connection.close()
    if response.status == 200:
        return True, f"{url}: 200 {response.reason}"
    if response.status == 401 and config is not None and config.auth_required and not settings.health_open:
        return True, f"{url}: 401 {response.reason}, as expected with basic auth on and the probes closed"
    if response.status == 429 and config is not None and config.rate_limit is not None and not settings.health_open:
        # the probes closed share the rate limit with the scrapes: a 429 is a serving exporter's answer
        return True, f"{url}: 429 {response.reason}, the web config's rate limit with the probes closed"
    return False, f"{url}: {response.status} {response.reason}"
