"""The web config file (exporter-toolkit format): what it refuses, and basic auth in the
WSGI app. Real TLS handshakes are in tests/integration/test_web_security.py."""

import base64

import bcrypt
import pytest

from celery_exporter.webconfig import Authenticator, WebConfigError, load

from .test_receiver_web_cli import call, run_cli, web_for

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()


def write(tmp_path, text):
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text,message",
    [
        ("basic_auth_users: [a, b]\n", "basic_auth_users must map"),
        ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice: not a bcrypt hash"),
        ("basic_auth_users:\n  alice: $2y$10$tooshort\n", "basic_auth_users.alice: not a valid bcrypt hash"),
        ("basic_auth_user:\n  alice: x\n", "unknown key 'basic_auth_user'"),
        (
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
            "tls_server_config.cert_file: no such file",
        ),
        ("tls_server_config:\n  certfile: x\n", "unknown key tls_server_config.certfile"),
        ("tls_server_config: [1]\n", "tls_server_config must be a mapping"),
        ("- just\n- a list\n", "expected a mapping"),
        ("basic_auth_users: {a: [\n", "not valid YAML"),
    ],
)
def test_unusable_config_is_refused_with_the_key_named(tmp_path, text, message):
    with pytest.raises(WebConfigError, match=message.replace("[", r"\[").replace("$", r"\$")) as exc:
        load(write(tmp_path, text))
    assert str(tmp_path) in str(exc.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(WebConfigError, match="cannot read"):
        load(str(tmp_path / "absent.yml"))


def test_a_bad_web_config_is_a_cli_error_naming_the_flag(tmp_path, capsys, monkeypatch):
    code, out, settings = run_cli(
        ["--web-config-file", write(tmp_path, "basic_auth_users:\n  a: nothash\n")], capsys, monkeypatch
    )
    assert code == 2 and settings is None
    (line,) = out.err.strip().splitlines()
    assert "--web-config-file" in line and "not a bcrypt hash" in line


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_authenticator():
    auth = Authenticator({"alice": HASH.encode()})
    assert auth.check(basic("alice", "pw")) == "alice"
    assert auth.check(basic("alice", "pw")) == "alice"  # from the cache
    assert auth.check(basic("alice", "PW")) is None
    assert auth.check(basic("bob", "pw")) is None
    for header in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"\xff\xfe").decode()):
        assert auth.check(header) is None


def test_basic_auth_in_front_of_every_endpoint_but_the_probes(rig, tmp_path):
    config = load(write(tmp_path, f"basic_auth_users:\n  alice: '{HASH}'\n"))
    web = web_for(rig, web_config=config)
    for path in ("/metrics", "/", "/nope"):
        status, headers, _ = call(web, path)
        assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="celery-exporter"', path
        assert call(web, path, {"Authorization": basic("alice", "nope")})[0] == 401
    assert call(web, "/metrics", {"Authorization": basic("alice", "pw")})[0] == 200
    assert call(web, "/-/healthy")[0] == 200
    assert call(web, "/-/ready")[0] == 503  # open, and says the truth (not connected)
    closed = web_for(rig, web_config=config, health_open=False)
    assert call(closed, "/-/healthy")[0] == 401
    assert call(closed, "/-/healthy", {"Authorization": basic("alice", "pw")})[0] == 200
