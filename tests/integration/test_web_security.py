"""Protecting /metrics: a web config file in the exporter-toolkit format (TLS with an
optional client CA, basic auth with bcrypt hashes), with real TLS handshakes on 127.0.0.1
and certificates made in the test."""

from __future__ import annotations

import base64
import http.client
import ssl
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

import bcrypt
import pytest

from .rig import HOST, Proc, clean_env, executable, free_port, make_certs, make_client_cert, wait_for

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


# -- the exporter-toolkit's keys, each shown with real handshakes ----------------------------


def handshake(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    import socket

    raw = socket.create_connection((HOST, port), timeout=5)
    return context.wrap_socket(raw, server_hostname=HOST)


def refused(port: int, context: ssl.SSLContext, auth: Optional[Tuple[str, str]] = None) -> str:
    """What a client with `context` gets instead of an answer (the test fails if it gets one)."""
    try:
        status = request(port, "/-/healthy", context, auth)[0]
    except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError) as exc:
        return type(exc).__name__
    raise AssertionError(f"answered {status}")


def serving(port: int, context: ssl.SSLContext, proc: Proc, auth: Optional[Tuple[str, str]] = None) -> None:
    wait_for(
        lambda: request(port, "/-/healthy", context, auth)[0] == 200,
        30,
        what="the exporter to serve https",
        describe=proc.log_text,
    )


def scrape_value(port: int, context: ssl.SSLContext, name: str, auth=None) -> float:
    body = request(port, "/metrics", context, auth)[2]
    (line,) = [line for line in body.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]
    return float(line.rsplit(" ", 1)[1])


def test_cipher_suites_and_max_version_refuse_what_is_not_listed(tmp_path):
    certs = make_certs(tmp_path)
    proc, port = start(
        tmp_path,
        """
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  max_version: TLS12
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256]
  curve_preferences: [CurveP384]
""",
    )
    try:
        ca = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        serving(port, ca, proc)
        with handshake(port, ca) as tls:  # a default client: TLS 1.2 (max_version), a listed suite
            assert tls.version() == "TLSv1.2" and tls.cipher()[0] == "ECDHE-RSA-AES128-GCM-SHA256"
        # a client offering only a TLS 1.2 suite that is not listed
        unlisted = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        unlisted.maximum_version = ssl.TLSVersion.TLSv1_2
        unlisted.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
        assert refused(port, unlisted) == "SSLError"
        # the other listed suite is taken
        listed = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        listed.set_ciphers("ECDHE-RSA-CHACHA20-POLY1305")
        with handshake(port, listed) as tls:
            assert tls.cipher()[0] == "ECDHE-RSA-CHACHA20-POLY1305"
        # a TLS 1.3-only client
        only13 = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        only13.minimum_version = ssl.TLSVersion.TLSv1_3
        assert refused(port, only13) == "SSLError"
        # the openssl command line agrees: the curve is the one configured, an unlisted suite fails
        openssl = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-CAfile", str(certs["ca.crt"])]
        ok = subprocess.run(openssl, input=b"", capture_output=True, timeout=30)
        assert b"Server Temp Key: ECDH, secp384r1" in ok.stdout or b"Peer Temp Key: ECDH, secp384r1" in ok.stdout
        bad = subprocess.run(
            [*openssl, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-SHA"], input=b"", capture_output=True, timeout=30
        )
        assert bad.returncode != 0 and b"handshake failure" in bad.stdout + bad.stderr
        assert request(port, "/-/healthy", ca)[0] == 200 and proc.running
    finally:
        assert proc.stop() == 0


def test_client_allowed_sans_headers_and_rate_limit(tmp_path):
    certs = make_certs(tmp_path, client=True)
    make_client_cert(tmp_path, "intruder", "DNS:intruder,IP:127.0.0.1")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    proc, port = start(
        tmp_path,
        f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  client_allowed_sans: [prometheus, 10.1.2.3]
http_server_config:
  http2: false
  headers:
    Strict-Transport-Security: max-age=31536000; includeSubDomains
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
basic_auth_users:
  prometheus: {hashed}
rate_limit:
  interval: 1h
  burst: 12
""",
    )
    auth = ("prometheus", PASSWORD)
    try:
        good = client_context(certs)
        serving(port, good, proc)
        # configured headers on every response: 200, 401, 404
        answers = [
            request(port, "/metrics", good, auth),
            request(port, "/metrics", good),
            request(port, "/nope", good, auth),
            request(port, "/-/ready", good),
        ]
        assert [a[0] for a in answers][:3] == [200, 401, 404]
        for status, headers, _ in answers:
            assert headers.get("Strict-Transport-Security") == "max-age=31536000; includeSubDomains", status
            assert headers.get("X-Frame-Options") == "deny" and headers.get("X-Content-Type-Options") == "nosniff"
        # a certificate of the same CA outside client_allowed_sans: the connection is closed
        intruder = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        intruder.load_cert_chain(str(tmp_path / "intruder.crt"), str(tmp_path / "intruder.key"))
        assert refused(port, intruder, auth) in ("ConnectionResetError", "RemoteDisconnected", "SSLEOFError")
        refusals = 'celery_exporter_http_requests_refused_total{reason="client_certificate"}'
        assert scrape_value(port, good, refusals, auth) == 1
        # the rate limit: 12 at once, then 429 (with the headers), counted
        statuses = [request(port, "/metrics", good, auth)[0] for _ in range(14)]
        assert statuses.count(429) >= 2 and statuses[-1] == 429
        status, headers, _ = request(port, "/", good, auth)
        assert status == 429 and headers.get("Retry-After") == "1" and headers.get("X-Frame-Options") == "deny"
        assert request(port, "/-/healthy", good)[0] == 200  # probes stay open
        log = proc.log_text()
        assert "Traceback" not in log and proc.running
    finally:
        assert proc.stop() == 0


def test_a_rotated_certificate_and_password_apply_without_a_restart(tmp_path):
    certs = make_certs(tmp_path)
    first = bcrypt.hashpw(b"first", bcrypt.gensalt(rounds=4)).decode()
    second = bcrypt.hashpw(b"second", bcrypt.gensalt(rounds=4)).decode()
    config = """
tls_server_config:
  cert_file: tls.crt
  key_file: tls.key
http_server_config:
  headers:
    X-Frame-Options: {frame}
basic_auth_users:
  prometheus: {hashed}
"""
    (tmp_path / "tls.crt").write_bytes(certs["server.crt"].read_bytes())
    (tmp_path / "tls.key").write_bytes(certs["server.key"].read_bytes())
    proc, port = start(tmp_path, config.format(frame="deny", hashed=first))
    try:
        old_ca = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        serving(port, old_ca, proc)
        assert request(port, "/metrics", old_ca, ("prometheus", "first"))[0] == 200
        # cert-manager renews: a new certificate from a new CA, in place; a new password and header
        (tmp_path / "renewed").mkdir()
        renewed = make_certs(tmp_path / "renewed")
        (tmp_path / "tls.key").write_bytes(renewed["server.key"].read_bytes())
        (tmp_path / "tls.crt").write_bytes(renewed["server.crt"].read_bytes())
        (tmp_path / "web.yml").write_text(config.format(frame="sameorigin", hashed=second))
        new_ca = ssl.create_default_context(cafile=str(renewed["ca.crt"]))
        wait_for(lambda: request(port, "/-/healthy", new_ca)[0] == 200, 20, what="the renewed certificate")
        with handshake(port, new_ca) as tls:
            served = tls.getpeercert(binary_form=True)
        assert served == ssl.PEM_cert_to_DER_cert(renewed["server.crt"].read_text())
        assert refused(port, old_ca) == "SSLCertVerificationError"
        assert request(port, "/metrics", new_ca, ("prometheus", "first"))[0] == 401
        status, headers, _ = request(port, "/metrics", new_ca, ("prometheus", "second"))
        assert status == 200 and headers.get("X-Frame-Options") == "sameorigin"
        reload_errors = "celery_exporter_web_config_reload_errors_total"
        assert scrape_value(port, new_ca, reload_errors, ("prometheus", "second")) == 0
        # an invalid new file: the last good one stays, logged once, counted
        (tmp_path / "web.yml").write_text(config.format(frame="allow-all", hashed=second))
        wait_for(
            lambda: scrape_value(port, new_ca, reload_errors, ("prometheus", "second")) == 1,
            20,
            what="the failed reload to be counted",
            describe=proc.log_text,
        )
        status, headers, _ = request(port, "/metrics", new_ca, ("prometheus", "second"))
        assert status == 200 and headers.get("X-Frame-Options") == "sameorigin"
        for _ in range(5):
            request(port, "/-/healthy", new_ca)
        assert proc.log_text().count("web config not reloaded") == 1
        assert "X-Frame-Options: 'allow-all'" in proc.log_text()
    finally:
        assert proc.stop() == 0


def test_files_the_toolkit_accepts_start_here_too(tmp_path):
    """VerifyClientCertIfGiven without a client CA (Go then verifies against the system's
    roots), inline certificate and key: it starts, serves a client without a certificate,
    and refuses one whose certificate no system root issued."""
    certs = make_certs(tmp_path, client=True)

    def inline(key: str, name: str) -> str:
        return f"  {key}: |\n" + "".join(f"    {line}\n" for line in certs[name].read_text().splitlines())

    proc, port = start(
        tmp_path,
        "tls_server_config:\n"
        + inline("cert", "server.crt")
        + inline("key", "server.key")
        + "  client_auth_type: VerifyClientCertIfGiven\n",
    )
    try:
        without = client_context(certs, with_cert=False)
        serving(port, without, proc)
        assert request(port, "/metrics", without)[0] == 200
        assert refused(port, client_context(certs)) in ("SSLError", "SSLEOFError", "ConnectionResetError")
        assert proc.running
    finally:
        assert proc.stop() == 0
