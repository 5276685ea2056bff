"""`celery-exporter healthcheck` against a real exporter, both configured by the same
environment variables, as the image's HEALTHCHECK runs it: plain HTTP, then TLS with
client certificates and basic auth (the probes open, then closed), with real handshakes on
127.0.0.1 and certificates made in the test. It must also be able to say "unhealthy"."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict, Tuple

import bcrypt
import pytest

from .rig import HOST, Proc, clean_env, executable, free_port, make_certs, wait_for

pytestmark = pytest.mark.integration


def exporter_env(port: int, web_config: str = "", **extra: str) -> Dict[str, str]:
    env = clean_env(
        CELERY_EXPORTER_BROKER_URL="redis://127.0.0.1:6379/15",
        CELERY_EXPORTER_LISTEN_ADDRESS=HOST,
        CELERY_EXPORTER_PORT=str(port),
        CELERY_EXPORTER_INSPECT="false",
        **extra,
    )
    if web_config:
        env["CELERY_EXPORTER_WEB_CONFIG_FILE"] = web_config
    return env


def healthcheck(env: Dict[str, str], *extra: str) -> Tuple[int, str]:
    result = subprocess.run(
        [executable("celery-exporter"), "healthcheck", "--timeout", "5s", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, (result.stdout + result.stderr).strip()


def start(tmp: Path, env: Dict[str, str]) -> Proc:
    proc = Proc("exporter", [executable("celery-exporter")], tmp / "exporter.log", env)
    wait_for(
        lambda: not proc.running or healthcheck(env)[0] == 0,
        20,
        what="the exporter to answer the health check",
        describe=proc.log_text,
    )
    assert proc.running, proc.log_text()
    return proc


def test_plain_http_healthy_while_serving_unhealthy_once_stopped(tmp_path):
    env = exporter_env(free_port())
    proc = start(tmp_path, env)
    try:
        code, out = healthcheck(env)
        assert code == 0 and out == f"healthy: http://{HOST}:{env['CELERY_EXPORTER_PORT']}/-/healthy: 200 OK"
    finally:
        proc.stop()
    code, out = healthcheck(env)
    assert code == 1 and out.startswith("unhealthy: ") and "ConnectionRefusedError" in out, out


def web_config(tmp: Path, hashed: str, **tls: str) -> str:
    lines = ["tls_server_config:", "  cert_file: server.crt", "  key_file: server.key"]
    lines += [f"  {key}: {value}" for key, value in tls.items()]
    lines += ["basic_auth_users:", f"  prometheus: {hashed}"]
    path = tmp / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_tls_with_client_certificates_and_basic_auth(tmp_path):
    """mTLS whose client CA also issued the server's certificate, and basic auth with the
    probes open: the check presents the server's own certificate, needs no password, and
    expects the certificate of the web config."""
    make_certs(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=10)).decode()
    config = web_config(tmp_path, hashed, client_auth_type="RequireAndVerifyClientCert", client_ca_file="ca.crt")
    env = exporter_env(free_port(), config)
    proc = start(tmp_path, env)
    try:
        code, out = healthcheck(env)
        assert code == 0 and out == f"healthy: https://{HOST}:{env['CELERY_EXPORTER_PORT']}/-/healthy: 200 OK", out
        # a web config naming another certificate: not the exporter it expects
        other = tmp_path / "other"
        other.mkdir()
        make_certs(other)
        other_config = web_config(other, hashed, client_auth_type="RequireAndVerifyClientCert", client_ca_file="ca.crt")
        code, out = healthcheck({**env, "CELERY_EXPORTER_WEB_CONFIG_FILE": other_config})
        assert code == 1, out
        # (the other CA does not know the client certificate it presents: the server refuses
        # the handshake; without client certificates the check sees the certificate differ)
        code, out = healthcheck({**env, "CELERY_EXPORTER_WEB_CONFIG_FILE": web_config(other, hashed)})
        assert code == 1 and "presents another certificate than the web config's cert_file" in out, out
        # plain http to the https port
        code, out = healthcheck({**env, "CELERY_EXPORTER_WEB_CONFIG_FILE": ""})
        assert code == 1 and out.startswith(f"unhealthy: http://{HOST}:"), out
    finally:
        proc.stop()
    assert "s3cret" not in proc.log_text()


def test_basic_auth_with_the_probes_closed_answers_401_as_expected(tmp_path):
    make_certs(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=10)).decode()
    env = exporter_env(free_port(), web_config(tmp_path, hashed), CELERY_EXPORTER_WEB_HEALTH_OPEN="false")
    proc = start(tmp_path, env)
    try:
        code, out = healthcheck(env)
        assert code == 0 and out.endswith("401 Unauthorized, as expected with basic auth on and the probes closed"), out
        # a 401 where the probes should be open is not healthy
        code, out = healthcheck({**env, "CELERY_EXPORTER_WEB_HEALTH_OPEN": "true"})
        assert code == 1 and out.endswith("/-/healthy: 401 Unauthorized"), out
        # a rate limit (the closed probes share it, as in the toolkit): a 429 is healthy too
        path = Path(env["CELERY_EXPORTER_WEB_CONFIG_FILE"])
        path.write_text(path.read_text() + "rate_limit:\n  interval: 1h\n  burst: 1\n")
        out = wait_for(
            lambda: (lambda r: r[0] == 0 and "429" in r[1] and r[1])(healthcheck(env)),
            20,
            what="the reloaded rate limit to answer 429",
            describe=proc.log_text,
        )
        assert out.endswith("429 Too Many Requests, the web config's rate limit with the probes closed"), out
    finally:
        proc.stop()


def test_inline_pem_allowed_sans_headers_and_a_rate_limit(tmp_path):
    """The toolkit's newer keys together: an inline certificate, key and client CA,
    client_allowed_sans naming the server's own certificate (which the check presents), a
    rate limit of one request per hour and headers. The check passes every time: the probes
    are not rate limited."""
    certs = make_certs(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()

    def inline(key: str, name: str) -> str:
        return f"  {key}: |\n" + "".join(f"    {line}\n" for line in certs[name].read_text().splitlines())

    path = tmp_path / "inline.yml"
    path.write_text(
        "tls_server_config:\n"
        + inline("cert", "server.crt")
        + inline("key", "server.key")
        + inline("client_ca", "ca.crt")
        + f"  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: ['{HOST}']\n"
        + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        + f"basic_auth_users:\n  prometheus: {hashed}\n"
        + "rate_limit:\n  interval: 1h\n  burst: 1\n"
    )
    env = exporter_env(free_port(), str(path))
    proc = start(tmp_path, env)
    try:
        for _ in range(3):
            code, out = healthcheck(env)
            assert code == 0 and out.endswith("/-/healthy: 200 OK"), out
        # the chart's readiness probe with client certificates: --ready, 200 once the broker is connected
        wait_for(lambda: healthcheck(env, "--ready")[0] == 0, 20, what="readiness", describe=proc.log_text)
        assert healthcheck(env, "--ready")[1].endswith("/-/ready: 200 OK")
        # the server's certificate is outside the allowed SANs: the connection is closed after the handshake
        allowed = f"client_allowed_sans: ['{HOST}']"
        path.write_text(path.read_text().replace(allowed, "client_allowed_sans: [elsewhere]"))
        wait_for(lambda: healthcheck(env)[0] == 1, 20, what="the reloaded SANs to turn the check away")
    finally:
        proc.stop()
