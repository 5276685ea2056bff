"""The web config file (exporter-toolkit format): every key checked as the toolkit checks it
and turned into what it means, the rate limiter and the reloader on a fake clock, and basic
auth in the WSGI app. Real TLS handshakes are in tests/integration/test_web_security.py."""

import base64
import logging
import os
import ssl
import subprocess

import bcrypt
import pytest

from celery_exporter import webconfig
from celery_exporter.webconfig import (
    CIPHER_SUITES,
    Authenticator,
    RateLimit,
    RateLimiter,
    Reloader,
    WebConfigError,
    go_duration,
    load,
    peer_sans,
)

from ..integration.rig import make_certs
from .test_receiver_web_cli import call, run_cli, web_for

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()


def write(tmp_path, text, name="web.yml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), client=True)


def tls(certs, extra=""):
    return f"tls_server_config:\n  cert_file: {certs['server.crt']}\n  key_file: {certs['server.key']}\n{extra}"


@pytest.mark.parametrize(
    "text,message",
    [
        ("basic_auth_users: [a, b]\n", "basic_auth_users must map"),
        ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice: not a bcrypt hash"),
        ("basic_auth_users:\n  alice: $2y$10$tooshort\n", "basic_auth_users.alice: not a valid bcrypt hash"),
        ("basic_auth_user:\n  alice: x\n", "unknown key basic_auth_user"),
        (
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
            "tls_server_config.cert_file: cannot read",
        ),
        ("tls_server_config:\n  certfile: x\n", "unknown key tls_server_config.certfile"),
        ("tls_server_config: [1]\n", "tls_server_config must be a mapping"),
        ("tls_server_config:\n  min_version: TLS12\n", "tls_server_config.min_version given without a certificate"),
        ("- just\n- a list\n", "expected a mapping"),
        ("basic_auth_users: {a: [\n", "not valid YAML"),
        ("http_server_config:\n  headers:\n    Server: x\n", "'Server' can not be configured"),
        ("http_server_config:\n  headers:\n    x-frame-options: deny\n", "'x-frame-options' can not be configured"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "X-Frame-Options: 'allow' is not one of"),
        ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n", "X-Content-Type-Options: 'sniff'"),
        ('http_server_config:\n  headers:\n    X-XSS-Protection: "1\\r\\nSet-Cookie: a"\n', "not a header value"),
        ("http_server_config:\n  http2: maybe\n", "http2 must be true or false"),
        ("http_server_config:\n  http3: true\n", "unknown key http_server_config.http3"),
        ("rate_limit:\n  interval: soon\n  burst: 1\n", "rate_limit.interval 'soon' is not a duration"),
        ("rate_limit:\n  interval: 1s\n", "rate_limit.burst must be a whole number of at least 1"),
        ("rate_limit:\n  interval: 1s\n  burst: 2\n  per: ip\n", "unknown key rate_limit.per"),
    ],
)
def test_unusable_config_is_refused_with_the_key_named(tmp_path, text, message):
    with pytest.raises(WebConfigError, match=message.replace("[", r"\[").replace("$", r"\$")) as exc:
        load(write(tmp_path, text))
    assert str(tmp_path) in str(exc.value)


@pytest.mark.parametrize(
    "extra,message",
    [
        ("  client_auth_type: Sometimes\n", "client_auth_type 'Sometimes' is not one of"),
        ("  client_ca_file: {ca}\n", "a client CA is given with client_auth_type NoClientCert"),
        ("  client_allowed_sans: [a]\n", "client_allowed_sans needs a client_auth_type"),
        ("  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: a\n", "must be a list of strings"),
        ("  min_version: TLS14\n", "min_version 'TLS14' is not one of"),
        ("  min_version: TLS13\n  max_version: TLS12\n", "min_version is above max_version"),
        ("  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n", "unknown cipher 'TLS_RSA_WITH_RC4_128_SHA'"),
        ("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n  max_version: TLS12\n", "names only TLS 1.3 suites"),
        ("  curve_preferences: [CurveP224]\n", "unknown curve 'CurveP224'"),
        ("  curve_preferences: [CurveP256, X25519]\n", "sets one curve only"),
        ("  prefer_server_cipher_suites: yes please\n", "prefer_server_cipher_suites must be true or false"),
        ("  cert: inline\n", "give cert or cert_file, not both"),
    ],
)
def test_tls_keys_are_checked_as_the_toolkit_checks_them(tmp_path, certs, extra, message):
    with pytest.raises(WebConfigError, match=message):
        load(write(tmp_path, tls(certs, extra.format(ca=certs["ca.crt"]))))


def test_an_encrypted_key_is_refused_without_asking_for_a_pass_phrase(tmp_path):
    run = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=x", "-passout", "pass:abc"]
    subprocess.run([*run, "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")], check=True)
    with pytest.raises(WebConfigError, match="cannot load the certificate and key: the key is encrypted"):
        load(write(tmp_path, "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n"))


def test_missing_halves_of_the_certificate_are_named(tmp_path, certs):
    with pytest.raises(WebConfigError, match="missing one of key or key_file"):
        load(write(tmp_path, f"tls_server_config:\n  cert_file: {certs['server.crt']}\n"))
    with pytest.raises(WebConfigError, match="missing one of cert or cert_file"):
        load(write(tmp_path, "tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n"))


def test_defaults_are_the_toolkits(tmp_path, certs):
    config = load(write(tmp_path, tls(certs)))
    context = config.ssl_context
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2 and context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_mode == ssl.CERT_NONE
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert config.headers == () and config.rate_limit is None and config.http2 is True and not config.auth_required
    assert config.files == (str((tmp_path / "web.yml").resolve()), str(certs["server.crt"]), str(certs["server.key"]))
    assert load(write(tmp_path, "")).ssl_context is None


def test_cipher_suites_restrict_tls12_in_the_order_given(tmp_path, certs):
    names = ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "TLS_AES_128_GCM_SHA256"]
    config = load(write(tmp_path, tls(certs, f"  cipher_suites: {names}\n  prefer_server_cipher_suites: false\n")))
    context = config.ssl_context
    assert context is not None
    offered = [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert offered == ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA"]
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    # only TLS 1.3 names: no TLS 1.2 handshake is possible, as in Go
    only13 = load(write(tmp_path, tls(certs, "  cipher_suites: [TLS_AES_256_GCM_SHA384]\n"))).ssl_context
    assert only13 is not None and only13.minimum_version == ssl.TLSVersion.TLSv1_3


def test_every_cipher_name_the_toolkit_accepts_is_known_to_openssl(tmp_path, certs):
    names = list(CIPHER_SUITES)
    context = load(write(tmp_path, tls(certs, f"  cipher_suites: {names}\n"))).ssl_context
    assert context is not None
    offered = {c["name"] for c in context.get_ciphers()}
    assert {n for n in CIPHER_SUITES.values() if n} <= offered


def test_client_auth_types_and_inline_pem(tmp_path, certs, caplog):
    inline = "".join(
        f"  {key}: |\n" + "".join(f"    {line}\n" for line in certs[name].read_text().splitlines())
        for key, name in (("cert", "server.crt"), ("key", "server.key"), ("client_ca", "ca.crt"))
    )
    expected = {
        "RequestClientCert": ssl.CERT_OPTIONAL,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAnyClientCert": ssl.CERT_REQUIRED,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }
    for auth, mode in expected.items():
        with caplog.at_level(logging.WARNING, logger="celery_exporter.webconfig"):
            caplog.clear()
            config = load(write(tmp_path, f"tls_server_config:\n{inline}  client_auth_type: {auth}\n"))
        assert config.ssl_context is not None and config.ssl_context.verify_mode == mode, auth
        assert config.ssl_context.get_ca_certs()[0]["subject"] == ((("commonName", "celery-exporter-it-ca"),),)
        assert config.server_pem is not None and config.server_pem[0] == certs["server.crt"].read_text()
        assert bool(caplog.records) == (auth in ("RequestClientCert", "RequireAnyClientCert")), auth
    # without a client CA: the system's roots, as Go does
    config = load(write(tmp_path, tls(certs, "  client_auth_type: VerifyClientCertIfGiven\n")))
    assert config.ssl_context is not None and config.ssl_context.verify_mode == ssl.CERT_OPTIONAL
    # no temporary file left behind by the inline certificate
    assert not [n for n in os.listdir(webconfig.tempfile.gettempdir()) if n.startswith("celery-exporter-")]


def _x25519_settable() -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ecdh_curve("X25519")
    except ssl.SSLError:  # Python 3.9 and 3.10 set EC curves only
        return False
    return True


def test_one_curve_is_applied(tmp_path, certs):
    config = load(write(tmp_path, tls(certs, "  curve_preferences: [CurveP384]\n")))
    assert config.ssl_context is not None
    x25519 = write(tmp_path, tls(certs, "  curve_preferences: [X25519]\n"))
    if _x25519_settable():
        assert load(x25519).ssl_context is not None
    else:  # refused at start, naming the key, where this Python cannot apply it
        with pytest.raises(WebConfigError, match="curve_preferences: this Python's ssl module cannot set X25519"):
            load(x25519)


def test_headers_http2_and_rate_limit(tmp_path):
    config = load(
        write(
            tmp_path,
            """
http_server_config:
  http2: false
  headers:
    Strict-Transport-Security: max-age=31536000
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    X-XSS-Protection: 1
    Content-Security-Policy: ""
rate_limit:
  interval: 1m30s
  burst: 3
""",
        )
    )
    assert config.headers == (
        ("Strict-Transport-Security", "max-age=31536000"),
        ("X-Frame-Options", "deny"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-XSS-Protection", "1"),
    )  # a blank value unsets
    assert config.http2 is False and config.rate_limit == RateLimit(interval=90.0, burst=3)
    assert load(write(tmp_path, "rate_limit:\n  interval: 0\n  burst: 0\n")).rate_limit is None  # 0 disables


@pytest.mark.parametrize(
    "text,seconds", [("0", 0.0), ("1s", 1.0), ("100ms", 0.1), ("1h30m", 5400.0), ("1.5s", 1.5), ("250us", 0.00025)]
)
def test_go_durations(text, seconds):
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1d", "1s2", "-1s"])
def test_not_go_durations(text):
    with pytest.raises(ValueError):
        go_duration(text)


def test_rate_limiter_is_a_token_bucket():
    now = [100.0]
    limiter = RateLimiter(RateLimit(interval=2.0, burst=3), clock=lambda: now[0])
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 1.0
    assert not limiter.allow()  # half a token
    now[0] += 1.0
    assert limiter.allow() and not limiter.allow()
    now[0] += 60.0  # refills up to the burst, no further
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]


def test_peer_sans_are_written_as_go_writes_them():
    cert = {
        "subjectAltName": (
            ("DNS", "prometheus"),
            ("IP Address", "2001:DB8:0:0:0:0:0:1\n"),
            ("IP Address", "10.0.0.1"),
            ("email", "a@b.c"),
            ("URI", "spiffe://cluster/ns/monitoring"),
            ("othername", "<unsupported>"),
        )
    }
    assert peer_sans(cert) == ["prometheus", "2001:db8::1", "10.0.0.1", "a@b.c", "spiffe://cluster/ns/monitoring"]


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


def test_a_slow_hash_costs_nothing_at_load(tmp_path, monkeypatch):
    slow = "$2b$18$" + HASH[7:]  # cost 18: seconds per check
    monkeypatch.setattr(bcrypt, "checkpw", lambda *a: pytest.fail("bcrypt ran at load"))
    monkeypatch.setattr(bcrypt, "hashpw", lambda *a: pytest.fail("bcrypt ran at load"))
    assert load(write(tmp_path, f"basic_auth_users:\n  alice: '{slow}'\n")).users == {"alice": slow.encode()}


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_authenticator_checks_each_outcome_once(monkeypatch):
    calls = []
    real = bcrypt.checkpw

    def counting(password, hashed):
        calls.append((password, hashed))
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    auth = Authenticator({"alice": HASH.encode()})
    assert auth.check(basic("alice", "pw")) == "alice"
    assert auth.check(basic("alice", "pw")) == "alice"  # from the cache
    assert auth.check("basic " + basic("alice", "pw")[6:]) == "alice"  # the scheme in any case
    assert len(calls) == 1
    assert auth.check(basic("alice", "PW")) is None
    assert auth.check(basic("alice", "PW")) is None
    assert auth.check(basic("bob", "pw")) is None  # checked against a dummy hash: as slow as a wrong password
    assert len(calls) == 3 and calls[2][1] == webconfig.UNKNOWN_USER_HASH
    # a new hash for alice (a reloaded file): checked again, the old password no longer passes
    new = bcrypt.hashpw(b"new", bcrypt.gensalt(rounds=4))
    assert auth.check(basic("alice", "pw"), {"alice": new}) is None
    assert auth.check(basic("alice", "new"), {"alice": new}) == "alice"
    for header in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"\xff\xfe").decode(), "Basic YQ=="):
        assert auth.check(header) is None


def test_the_cache_stays_bounded():
    auth = Authenticator({"alice": HASH.encode()})
    for n in range(webconfig.CACHE_SIZE * 3):
        auth.check(basic("alice", f"wrong{n}"))
    assert len(auth._cache) <= webconfig.CACHE_SIZE


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_reloader_applies_a_changed_file_and_keeps_the_last_good_one(tmp_path, certs, caplog):
    path = write(tmp_path, "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    clock, errors = FakeClock(), []
    reloader = Reloader(load(path), on_error=lambda: errors.append(1), clock=clock, every=1.0)
    first = reloader.current()
    write(tmp_path, "http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n")
    os.utime(path, ns=(1, 1))  # a different mtime even within one clock tick
    assert reloader.current() is first  # not looked at before `every` seconds
    clock.now += 1.0
    assert reloader.current().headers == (("X-Frame-Options", "sameorigin"),)
    good = reloader.current()
    # an invalid version: the last good one stays, logged once and counted once
    write(tmp_path, "http_server_config:\n  headers:\n    X-Frame-Options: allow\n")
    os.utime(path, ns=(2, 2))
    with caplog.at_level(logging.ERROR, logger="celery_exporter.webconfig"):
        for _ in range(5):
            clock.now += 1.0
            assert reloader.current() is good
    assert errors == [1]
    (record,) = caplog.records
    assert "X-Frame-Options" in record.getMessage() and "last good one stays" in record.getMessage()
    # fixed: applied
    write(tmp_path, "basic_auth_users:\n  alice: '" + HASH + "'\n")
    clock.now += 1.0
    assert reloader.current().users == {"alice": HASH.encode()} and reloader.current().headers == ()
    # TLS cannot be turned on by a reload
    write(tmp_path, tls(certs))
    clock.now += 1.0
    assert reloader.current().ssl_context is None and errors == [1, 1]


def test_reloader_sees_a_renewed_certificate(tmp_path, certs):
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_bytes(certs[name].read_bytes())
    path = write(tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    clock = FakeClock()
    reloader = Reloader(load(path), clock=clock)
    before = reloader.current().ssl_context
    (tmp_path / "renewed").mkdir()
    other = make_certs(tmp_path / "renewed")
    # as cert-manager renews: new files in place (the config file itself is unchanged)
    (tmp_path / "server.crt").write_bytes(other["server.crt"].read_bytes())
    (tmp_path / "server.key").write_bytes(other["server.key"].read_bytes())
    clock.now += 1.0
    after = reloader.current()
    assert after.ssl_context is not before and after.server_pem is not None
    assert after.server_pem[0] == other["server.crt"].read_text()


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


def test_headers_on_every_answer_and_the_rate_limit_answers_429(rig, tmp_path):
    config = load(
        write(
            tmp_path,
            f"""
basic_auth_users:
  alice: '{HASH}'
http_server_config:
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=60
rate_limit:
  interval: 1h
  burst: 3
""",
        )
    )
    web = web_for(rig, web_config=config)
    answers = [call(web, p, {"Authorization": basic("alice", "pw")}) for p in ("/metrics", "/nope", "/")]
    answers.append(call(web, "/metrics"))  # over the limit already: 429 before auth, as the toolkit does
    answers += [call(web, "/-/healthy"), call(web, "/-/ready")]  # probes: open, not limited
    assert [a[0] for a in answers] == [200, 404, 200, 429, 200, 503]
    for _, headers, _ in answers:
        assert headers["X-Frame-Options"] == "deny" and headers["Strict-Transport-Security"] == "max-age=60"
    assert answers[3][1]["Retry-After"] == "1"
    assert rig.store.exporter.snapshot_locked().http_refused["rate_limit"] == 1


# The cases of the exporter-toolkit's web/tls_config_test.go and web/testdata (which files
# load, which are refused), written again with our own certificates: CRT/KEY/CA stand for
# the server's certificate, key and CA files.
PAIR = "tls_server_config:\n  cert_file: CRT\n  key_file: KEY\n"
VERIFY = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: CA\n"
TOOLKIT_GOOD = {
    "empty": "",
    "noAuth.good": PAIR,
    "tlsInline": "tls_server_config:\n  cert: INLINE_CRT\n  key: INLINE_KEY\n",
    "allCiphers": PAIR + f"  client_auth_type: VerifyClientCertIfGiven\n  cipher_suites: {list(CIPHER_SUITES)}\n",
    "someCiphers_noOrder": PAIR + "  max_version: TLS12\n"
    "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n"
    "  prefer_server_cipher_suites: false\n",
    "someCurves": PAIR + "  client_auth_type: VerifyClientCertIfGiven\n"
    "  min_version: TLS13\n  curve_preferences: [CurveP521]\n",
    "noHTTP2": PAIR + "  client_auth_type: VerifyClientCertIfGiven\n"
    "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n  max_version: TLS12\n"
    "http_server_config:\n  http2: false\n",
    # Go refuses it when serving HTTP/2 (no HTTP/2 cipher); the server here speaks HTTP/1.x
    "noHTTP2Cipher": PAIR + "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n  max_version: TLS12\n",
    "headers.good": "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    "    Strict-Transport-Security: max-age=31536000; includeSubDomains\n    X-Content-Type-Options: nosniff\n"
    "    X-XSS-Protection: 1\n    Content-Security-Policy: \"default-src 'self' *.test.example.net\"\n",
    "requireanyclientcert": PAIR + "  client_auth_type: RequireAnyClientCert\n",
    "requireandverifyclientcert": PAIR + VERIFY,
    "client_san.good": PAIR + VERIFY + "  client_allowed_sans: [one, test3, two]\n",
    "rate_limiter_nonblocking": "rate_limit:\n  interval: 0\n  burst: 0\n",
    "rate_limiter_one_second": "rate_limit:\n  interval: 1s\n  burst: 1\n",
    "users_noTLS": f"basic_auth_users:\n  alice: '{HASH}'\n",
}
TOOLKIT_BAD = {
    "junk": ("hWkNKCp3fvIx3jKnsaBI\nTuEjdwNS8A2vYdFbiKqr\n", "expected a mapping"),
    "junk_key": ("tls_server_config:\n  cert_filse: CRT\n", "unknown key tls_server_config.cert_filse"),
    "certPath_empty": ("tls_server_config:\n  cert_file: ''\n  key_file: KEY\n", "cert_file must be a file name"),
    "cert_empty": ("tls_server_config:\n  cert: ''\n  key_file: KEY\n", "cert must be PEM text"),
    "keyPath_empty": ("tls_server_config:\n  cert_file: CRT\n  key_file: ''\n", "key_file must be a file name"),
    "key_empty": ("tls_server_config:\n  cert_file: CRT\n  key: ''\n", "key must be PEM text"),
    "certPath_keyPath_empty": (
        "tls_server_config:\n  cert_file: ''\n  key_file: ''\n  client_auth_type: x\n",
        "cert_file must be a file name",
    ),
    "certPath_invalid": ("tls_server_config:\n  cert_file: nope.crt\n  key_file: KEY\n", "cert_file: cannot read"),
    "keyPath_invalid": ("tls_server_config:\n  cert_file: CRT\n  key_file: nope.key\n", "key_file: cannot read"),
    "noAuth.bad": (
        PAIR + "  client_ca_file: /dev/null\n",
        "a client CA is given with client_auth_type NoClientCert",
    ),
    "clientCAs_invalid": (
        PAIR + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: nope.pem\n",
        "client_ca_file: cannot read",
    ),
    "user_list_invalid": ("basic_auth_users:\n  john: doe\n", "basic_auth_users.john: not a bcrypt hash"),
    "inventedCiphers": (
        PAIR + "  cipher_suites: [TLS_FOO]\n",
        "cipher",
    ),
    "inventedCurves": (
        PAIR + "  curve_preferences: [CurveP1]\n",
        "curve",
    ),
    "wrongTLSVersion": (
        PAIR + "  min_version: TLS111\n",
        "min_version",
    ),
    "headers_content_type_options": (
        "http_server_config:\n  headers:\n    X-Content-Type-Options: foo\n",
        "X-Content-Type-Options: 'foo' is not one of nosniff",
    ),
    "headers_frame_options": ("http_server_config:\n  headers:\n    X-Frame-Options: foo\n", "X-Frame-Options: 'foo'"),
    "headers_extra_header": ("http_server_config:\n  headers:\n    Foo: Bar\n", "'Foo' can not be configured"),
    # a documented limit, not the toolkit's: Python's ssl sets one curve
    "allCurves": (
        PAIR + "  curve_preferences: [CurveP256, CurveP384, CurveP521, X25519]\n",
        "sets one curve only",
    ),
}


def toolkit_file(tmp_path, certs, text):
    def inline(name):
        return "|\n" + "".join(f"    {line}\n" for line in certs[name].read_text().splitlines())

    for mark, name in (("INLINE_CRT", "server.crt"), ("INLINE_KEY", "server.key")):
        text = text.replace(f"{mark}\n", inline(name))
    for mark, name in (("CRT", "server.crt"), ("KEY", "server.key"), ("CA", "ca.crt")):
        text = text.replace(f" {mark}\n", f" {certs[name]}\n")
    return write(tmp_path, text)


@pytest.mark.parametrize("case", sorted(TOOLKIT_GOOD))
def test_what_the_toolkit_loads_loads(tmp_path, certs, case):
    config = load(toolkit_file(tmp_path, certs, TOOLKIT_GOOD[case]))
    assert (config.ssl_context is not None) == ("tls_server_config" in TOOLKIT_GOOD[case])


@pytest.mark.parametrize("case", sorted(TOOLKIT_BAD))
def test_what_the_toolkit_refuses_is_refused(tmp_path, certs, case):
    text, message = TOOLKIT_BAD[case]
    with pytest.raises(WebConfigError, match=message):
        load(toolkit_file(tmp_path, certs, text))


def test_certificate_files_need_no_temporary_directory(tmp_path, certs, monkeypatch):
    """A read-only root filesystem has no writable /tmp: cert_file and key_file are loaded
    from where they are; inline PEM, which ssl can only read from a file, is refused with
    what to do."""
    config_path = write(tmp_path, tls(certs))
    inline = "".join(
        f"  {key}: |\n" + "".join(f"    {line}\n" for line in certs[name].read_text().splitlines())
        for key, name in (("cert", "server.crt"), ("key", "server.key"))
    )
    inline_path = write(tmp_path, f"tls_server_config:\n{inline}", name="inline.yml")

    def no_tmp(*args, **kwargs):
        raise FileNotFoundError(2, "No usable temporary directory found")

    monkeypatch.setattr(webconfig.tempfile, "mkstemp", no_tmp)
    config = load(config_path)
    assert config.ssl_context is not None
    assert config.server_files == (str(certs["server.crt"]), str(certs["server.key"]))
    with pytest.raises(WebConfigError, match="no temporary directory is writable .* use cert_file and key_file"):
        load(inline_path)
