"""Protecting /metrics: a web config file in the exporter-toolkit format (TLS with an
optional client CA, basic auth with bcrypt hashes), with real TLS handshakes on 127.0.0.1
and certificates made in the test."""

from __future__ import annotations

import base64
import http.client
import ssl
from pathlib import Path
from typing import Dict, Optional, Tuple

import bcrypt
import pytest

from .rig import HOST, Proc, clean_env, executable, free_port, make_certs, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-scraper"


def start(tmp: Path, config: str, *extra: str) -> Tuple[Proc, int]:
    path = tmp / "web.yml"
    path.write_text(config)
    port = free_port()
    proc = Proc(
        "exporter",
        [
            executable("celery-exporter"),
            "--broker-url",
            "redis://127.0.0.1:6379/15",
            "--listen-address",
            HOST,
            "--port",
            str(port),
            "--no-inspect",
            "--web-config-file",
            str(path),
            *extra,
        ],
        tmp / "exporter.log",
        clean_env(),
    )
    return proc, port


def request(port: int, path: str, context: Optional[ssl.SSLContext], auth: Optional[Tuple[str, str]] = None):
    """(status, headers, body) over https (context) or plain http (None)."""
    if context is None:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
    else:
        conn = http.client.HTTPSConnection(HOST, port, timeout=5, context=context)
    headers: Dict[str, str] = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def client_context(certs, with_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs["ca.crt"]))
    if with_cert:
        context.load_cert_chain(str(certs["client.crt"]), str(certs["client.key"]))
    return context


def test_tls_with_client_certificates_and_basic_auth(tmp_path):
    certs = make_certs(tmp_path, client=True)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    proc, port = start(
        tmp_path,
        f"""
tls_server_config:
  cert_file: server.crt          # relative to the config file
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
basic_auth_users:
  prometheus: {hashed}
""",
    )
    try:
        good = client_context(certs)
        wait_for(
            lambda: request(port, "/-/healthy", good)[0] == 200,
            20,
            what="the exporter to serve https",
            describe=proc.log_text,
        )
        # the right certificate and credentials
        status, _, body = request(port, "/metrics", good, ("prometheus", PASSWORD))
        assert status == 200 and "celery_exporter_build_info{" in body
        assert request(port, "/", good, ("prometheus", PASSWORD))[0] == 200
        # no credentials: 401 with a challenge; wrong password or user: 401
        status, headers, _ = request(port, "/metrics", good)
        assert status == 401 and headers.get("WWW-Authenticate") == 'Basic realm="celery-exporter"'
        assert request(port, "/metrics", good, ("prometheus", "wrong"))[0] == 401
        assert request(port, "/metrics", good, ("nobody", PASSWORD))[0] == 401
        assert request(port, "/", good)[0] == 401  # the status page too
        # probes stay open by default
        assert request(port, "/-/healthy", good)[0] == 200
        assert request(port, "/-/ready", good)[0] in (200, 503)
        # no client certificate: the handshake fails
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            request(port, "/-/healthy", client_context(certs, with_cert=False))
        # plain http to the https port gets nothing useful
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            status = request(port, "/-/healthy", None)[0]
            assert status != 200
            raise ConnectionError(f"plain http answered {status}")
        # and after all that the exporter still serves
        assert request(port, "/metrics", good, ("prometheus", PASSWORD))[0] == 200
        assert proc.running
        assert "serving /metrics on https://" in proc.log_text() and "with basic auth" in proc.log_text()
        assert PASSWORD not in proc.log_text()
    finally:
        assert proc.stop() == 0


def test_health_endpoints_can_require_credentials_too(tmp_path):
    certs = make_certs(tmp_path)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    proc, port = start(
        tmp_path,
        f"""
tls_server_config:
  cert_file: {certs["server.crt"]}
  key_file: {certs["server.key"]}
basic_auth_users:
  prometheus: {hashed}
""",
        "--no-web-health-open",
    )
    try:
        context = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        wait_for(
            lambda: request(port, "/-/healthy", context, ("prometheus", PASSWORD))[0] == 200,
            20,
            what="the exporter to serve https",
            describe=proc.log_text,
        )
        assert request(port, "/-/healthy", context)[0] == 401
        assert request(port, "/-/ready", context)[0] == 401
        assert request(port, "/metrics", context, ("prometheus", PASSWORD))[0] == 200
    finally:
        assert proc.stop() == 0
