"""TLS, basic auth, response headers and a rate limit for the HTTP endpoints, from a web
config file in the format of the Prometheus exporter-toolkit (the one node_exporter's
--web.config.file reads), with its semantics key by key; docs/http.md has the table of keys.

Every key the toolkit knows is either applied or refused with one line naming it; an
unknown key is refused too. Where Python's ssl module cannot do what Go's crypto/tls does,
the difference is stated here and in the docs:

* every client certificate a client presents is verified (against client_ca_file /
  client_ca, or the system's roots when neither is given): RequestClientCert therefore
  behaves as VerifyClientCertIfGiven and RequireAnyClientCert as RequireAndVerifyClientCert
  (a warning says so at load);
* cipher_suites restricts TLS 1.0-1.2 only (as in Go, where TLS 1.3 suites are not
  configurable either); the TLS 1.3 names are accepted and change nothing;
* curve_preferences can name one curve (Python's ssl sets a single ECDH group): a list of
  several is refused;
* http2 is accepted and the server speaks HTTP/1.x.

`load` reads and checks the file; `Reloader` re-reads it (and the files it names) when one
of them changes, keeping the last good configuration when the new one is invalid.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

import yaml

log = logging.getLogger(__name__)


class WebConfigError(ValueError):
    """A web config file that cannot be used; the message names the file and the key."""


# Go's crypto/tls ClientAuthType names (RequireClientCert: the toolkit's old alias) and how
# Python's ssl applies them: it verifies every certificate it is shown (see the docstring).
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireClientCert": ssl.CERT_REQUIRED,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# the ones Go does not verify, which Python does
VERIFIED_ANYWAY = {
    "RequestClientCert": "VerifyClientCertIfGiven",
    "RequireAnyClientCert": "RequireAndVerifyClientCert",
    "RequireClientCert": "RequireAndVerifyClientCert",
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# The names Go's tls.CipherSuites() lists (the toolkit accepts exactly these), with
# OpenSSL's name for the TLS 1.0-1.2 ones; None: a TLS 1.3 suite, not configurable.
CIPHER_SUITES: Dict[str, Optional[str]] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# The headers the toolkit lets a file set, with the values it allows (None: any).
HEADERS: Dict[str, Optional[Tuple[str, ...]]] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
)
# the keys that turn TLS on (the toolkit's TLSConfig.IsEnabled)
TLS_ENABLING = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file")
HTTP_KEYS = ("http2", "headers")
RATE_KEYS = ("interval", "burst")


class ServerContext(ssl.SSLContext):
    """A server-side SSLContext that also carries client_allowed_sans, checked by
    `check_peer` once the handshake is done."""

    allowed_sans: Optional[FrozenSet[str]] = None


@dataclasses.dataclass(frozen=True)
class RateLimit:
    interval: float  # seconds between two requests, on average
    burst: int


@dataclasses.dataclass(frozen=True)
class WebConfig:
    path: str
    ssl_context: Optional[ssl.SSLContext]
    users: Mapping[str, bytes]  # user -> bcrypt hash
    # the certificate chain and key served, PEM (from cert_file/key_file or inline): the
    # health check compares the certificate the server presents with it and, when client
    # certificates are asked for, presents it (celery_exporter/healthcheck.py)
    server_pem: Optional[Tuple[str, str]] = dataclasses.field(default=None, repr=False)
    # cert_file and key_file, resolved, when the file names them: loaded from there, so that no
    # temporary file is needed (a read-only root filesystem has no writable /tmp)
    server_files: Optional[Tuple[str, str]] = dataclasses.field(default=None, repr=False)
    headers: Tuple[Tuple[str, str], ...] = ()
    rate_limit: Optional[RateLimit] = None
    http2: bool = True
    # the files read: a change to any of them is reloaded (Reloader)
    files: Tuple[str, ...] = ()

    @property
    def auth_required(self) -> bool:
        return bool(self.users)


def _check_keys(path: str, where: str, section: Mapping[object, object], known: Tuple[str, ...]) -> None:
    for key in section:
        if key not in known:
            prefix = f"{where}." if where else ""
            raise WebConfigError(f"{path}: unknown key {prefix}{key!s} (known: {', '.join(known)})")


def load(path: str) -> WebConfig:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: expected a mapping at the top")
    _check_keys(path, "", data, TOP_KEYS)
    base = Path(path).resolve().parent
    files: List[str] = [str(Path(path).resolve())]
    context, pem, pem_files = _tls(path, base, data.get("tls_server_config"), files)
    headers, http2 = _http(path, data.get("http_server_config"))
    return WebConfig(
        path=path,
        ssl_context=context,
        users=_users(path, data.get("basic_auth_users")),
        server_pem=pem,
        server_files=pem_files,
        headers=headers,
        rate_limit=_rate_limit(path, data.get("rate_limit")),
        http2=http2,
        files=tuple(files),
    )


# -- tls_server_config ---------------------------------------------------------------------


def _read(path: str, base: Path, key: str, value: object, files: List[str]) -> str:
    if not isinstance(value, str) or not value:
        raise WebConfigError(f"{path}: tls_server_config.{key} must be a file name")
    resolved = Path(value) if Path(value).is_absolute() else base / value  # relative to the config file
    try:
        text = resolved.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(
            f"{path}: tls_server_config.{key}: cannot read {str(resolved)!r}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    files.append(str(resolved))
    return text


def _pem(path: str, base: Path, section: Mapping[str, object], name: str, files: List[str]) -> Optional[str]:
    """The PEM text of `name` (cert, key, client_ca): inline, or from `name`_file."""
    inline, file_key = section.get(name), f"{name}_file"
    if inline is not None and section.get(file_key) is not None:
        raise WebConfigError(f"{path}: tls_server_config: give {name} or {file_key}, not both")
    if section.get(file_key) is not None:
        return _read(path, base, file_key, section[file_key], files)
    if inline is None:
        return None
    if not isinstance(inline, str) or not inline.strip():
        raise WebConfigError(f"{path}: tls_server_config.{name} must be PEM text")
    return inline


def _no_password() -> bytes:
    # an encrypted key is refused, as the toolkit refuses it: without this OpenSSL would ask
    # for the pass phrase on the terminal
    raise WebConfigError("the key is encrypted (a pass phrase is not supported)")


def load_chain(context: ssl.SSLContext, cert: str, key: str, files: Optional[Tuple[str, str]] = None) -> None:
    """context.load_cert_chain from `files` (cert_file, key_file) when given, else from PEM
    text (inline cert and key): ssl reads only files, so through a temporary file of mode
    0600, removed at once."""
    if files is not None:
        context.load_cert_chain(files[0], files[1], password=_no_password)
        return
    try:
        fd, name = tempfile.mkstemp(prefix="celery-exporter-", suffix=".pem")
    except OSError as exc:
        raise WebConfigError(
            f"inline cert and key are loaded through a temporary file, and no temporary directory is writable "
            f"({exc.strerror or exc}): mount one at /tmp (a read-only root filesystem), or use cert_file and key_file"
        ) from None
    try:
        with os.fdopen(fd, "w") as file:
            file.write(key.rstrip("\n") + "\n" + cert)
        context.load_cert_chain(name, password=_no_password)
    finally:
        os.unlink(name)


def _strings(path: str, key: str, value: object) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WebConfigError(f"{path}: tls_server_config.{key} must be a list of strings")
    return list(value)


def _tls(
    path: str, base: Path, section: object, files: List[str]
) -> Tuple[Optional[ssl.SSLContext], Optional[Tuple[str, str]], Optional[Tuple[str, str]]]:
    """The server's TLS context, its certificate and key as PEM text, and their files (when
    cert_file and key_file name them)."""
    if section is None:
        return None, None, None
    if not isinstance(section, dict):
        raise WebConfigError(f"{path}: tls_server_config must be a mapping")
    _check_keys(path, "tls_server_config", section, TLS_KEYS)
    if not any(section.get(k) for k in TLS_ENABLING):
        if section:  # the toolkit would serve plain HTTP and ignore them
            raise WebConfigError(
                f"{path}: tls_server_config.{sorted(section)[0]} given without a certificate (cert_file or cert)"
            )
        return None, None, None
    cert = _pem(path, base, section, "cert", files)
    key = _pem(path, base, section, "key", files)
    if cert is None:
        raise WebConfigError(f"{path}: tls_server_config: missing one of cert or cert_file")
    if key is None:
        raise WebConfigError(f"{path}: tls_server_config: missing one of key or key_file")
    pem_files = (files[-2], files[-1]) if section.get("cert_file") and section.get("key_file") else None
    context = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        load_chain(context, cert, key, pem_files)
    except (ssl.SSLError, OSError, WebConfigError) as exc:
        raise WebConfigError(f"{path}: tls_server_config: cannot load the certificate and key: {exc}") from None
    _client_auth(path, base, section, context, files)
    _versions(path, section, context)
    _ciphers(path, section, context)
    return context, (cert, key), pem_files


def _client_auth(
    path: str, base: Path, section: Mapping[str, object], context: ServerContext, files: List[str]
) -> None:
    auth = section.get("client_auth_type") or "NoClientCert"
    if auth not in CLIENT_AUTH:
        raise WebConfigError(
            f"{path}: tls_server_config.client_auth_type {auth!r} is not one of {', '.join(CLIENT_AUTH)}"
        )
    context.verify_mode = CLIENT_AUTH[auth]
    ca = _pem(path, base, section, "client_ca", files)
    if ca is not None and context.verify_mode == ssl.CERT_NONE:
        raise WebConfigError(
            f"{path}: tls_server_config: a client CA is given with client_auth_type {auth} (no client certificates)"
        )
    if context.verify_mode != ssl.CERT_NONE:
        if ca is not None:
            try:
                context.load_verify_locations(cadata=ca)
            except (ssl.SSLError, ValueError) as exc:
                raise WebConfigError(f"{path}: tls_server_config: cannot load the client CA: {exc}") from None
        else:
            context.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # Go verifies against the system's roots
        if auth in VERIFIED_ANYWAY:
            log.warning(
                "%s: client_auth_type %s: Python verifies every client certificate, so it acts as %s",
                path,
                auth,
                VERIFIED_ANYWAY[auth],
            )

    sans = section.get("client_allowed_sans")
    if sans is not None:
        allowed = _strings(path, "client_allowed_sans", sans)
        if context.verify_mode == ssl.CERT_NONE:
            raise WebConfigError(
                f"{path}: tls_server_config.client_allowed_sans needs a client_auth_type that asks for certificates"
            )
        context.allowed_sans = frozenset(allowed)


def _versions(path: str, section: Mapping[str, object], context: ssl.SSLContext) -> None:
    versions = {}
    for field, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = section.get(field) or default
        if name not in TLS_VERSIONS:
            raise WebConfigError(f"{path}: tls_server_config.{field} {name!r} is not one of {', '.join(TLS_VERSIONS)}")
        versions[field] = TLS_VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise WebConfigError(f"{path}: tls_server_config: min_version is above max_version")
    context.minimum_version = versions["min_version"]
    context.maximum_version = versions["max_version"]


def _ciphers(path: str, section: Mapping[str, object], context: ssl.SSLContext) -> None:
    """cipher_suites, curve_preferences, prefer_server_cipher_suites."""
    if section.get("cipher_suites") is not None:
        names = _strings(path, "cipher_suites", section["cipher_suites"])
        for name in names:
            if name not in CIPHER_SUITES:
                raise WebConfigError(f"{path}: tls_server_config.cipher_suites: unknown cipher {name!r}")
        openssl = [CIPHER_SUITES[n] for n in names if CIPHER_SUITES[n] is not None]
        if openssl:
            context.set_ciphers(":".join(n for n in openssl if n))
        elif names:  # only TLS 1.3 suites: no TLS 1.2 handshake is possible, as in Go
            if context.maximum_version < ssl.TLSVersion.TLSv1_3:
                raise WebConfigError(
                    f"{path}: tls_server_config.cipher_suites names only TLS 1.3 suites, and max_version is below TLS13"
                )
            context.minimum_version = ssl.TLSVersion.TLSv1_3

    if section.get("curve_preferences") is not None:
        curves = _strings(path, "curve_preferences", section["curve_preferences"])
        for name in curves:
            if name not in CURVES:
                raise WebConfigError(f"{path}: tls_server_config.curve_preferences: unknown curve {name!r}")
        if len(curves) > 1:
            raise WebConfigError(
                f"{path}: tls_server_config.curve_preferences: Python's ssl module sets one curve only; name one"
            )
        if curves:
            try:
                context.set_ecdh_curve(CURVES[curves[0]])
            except ssl.SSLError as exc:  # X25519 before Python 3.11, whose ssl sets EC curves only
                raise WebConfigError(
                    f"{path}: tls_server_config.curve_preferences: this Python's ssl module cannot set "
                    f"{curves[0]} ({exc.reason or exc}); name CurveP256, CurveP384 or CurveP521, or run on "
                    "Python 3.11 or newer"
                ) from None

    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError(f"{path}: tls_server_config.prefer_server_cipher_suites must be true or false")
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE


def peer_sans(cert: Mapping[str, object]) -> List[str]:
    """The subject alternative names of a verified peer certificate (SSLSocket.getpeercert()),
    written as Go's crypto/x509 writes them: IP addresses in their short form."""
    names = []
    for kind, value in cert.get("subjectAltName", ()):  # type: ignore[attr-defined]  # a tuple of pairs
        if kind == "IP Address":
            try:
                value = str(ipaddress.ip_address(value.strip()))
            except ValueError:
                pass  # left as given
        if kind in ("DNS", "email", "IP Address", "URI"):
            names.append(value)
    return names


def check_peer(sock: ssl.SSLSocket) -> Optional[str]:
    """Why a TLS client must be turned away after the handshake (client_allowed_sans), or None."""
    context = sock.context
    allowed = context.allowed_sans if isinstance(context, ServerContext) else None
    if allowed is None:
        return None
    cert = sock.getpeercert()
    if not cert:
        return "no client certificate, and client_allowed_sans is set"
    sans = peer_sans(cert)
    if any(name in allowed for name in sans):
        return None
    return f"client certificate names none of client_allowed_sans (it names {', '.join(sans) or 'nothing'})"


# -- http_server_config, rate_limit ----------------------------------------------------------


def _http(path: str, section: object) -> Tuple[Tuple[Tuple[str, str], ...], bool]:
    if section is None:
        return (), True
    if not isinstance(section, dict):
        raise WebConfigError(f"{path}: http_server_config must be a mapping")
    _check_keys(path, "http_server_config", section, HTTP_KEYS)
    http2 = section.get("http2", True)
    if not isinstance(http2, bool):
        raise WebConfigError(f"{path}: http_server_config.http2 must be true or false")
    headers = section.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError(f"{path}: http_server_config.headers must map header names to values")
    out = []
    for name, value in headers.items():
        if name not in HEADERS:
            raise WebConfigError(
                f"{path}: http_server_config.headers: {name!r} can not be configured (one of {', '.join(HEADERS)})"
            )
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        elif value is None:
            value = ""
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise WebConfigError(f"{path}: http_server_config.headers.{name}: not a header value")
        allowed = HEADERS[name]
        if allowed is not None and value not in allowed:
            raise WebConfigError(
                f"{path}: http_server_config.headers.{name}: {value!r} is not one of {', '.join(allowed)}"
            )
        if value:  # blank: unset, as the toolkit documents
            out.append((name, value))
    return tuple(out), http2


# a Go time.Duration: "1s", "100ms", "1m30s", "1.5h"; "0" alone
GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float:
    """Seconds in a Go duration string; ValueError if it is not one."""
    if text == "0":
        return 0.0
    parts = GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(text)
    return sum(float(n) * GO_UNITS[u] for n, u in parts)


def _rate_limit(path: str, section: object) -> Optional[RateLimit]:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise WebConfigError(f"{path}: rate_limit must be a mapping")
    _check_keys(path, "rate_limit", section, RATE_KEYS)
    raw = section.get("interval", "0")
    try:
        interval = raw * 1e-9 if isinstance(raw, int) and not isinstance(raw, bool) else go_duration(str(raw))
    except ValueError:
        raise WebConfigError(f"{path}: rate_limit.interval {raw!r} is not a duration (like 1s, 100ms)") from None
    if interval == 0:
        return None  # the toolkit's "0 disables"
    burst = section.get("burst", 0)
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
        # the toolkit would answer every request 429 with a burst of 0
        raise WebConfigError(f"{path}: rate_limit.burst must be a whole number of at least 1")
    return RateLimit(interval=interval, burst=burst)


class RateLimiter:
    """A token bucket: `burst` requests at once, then one per `interval` seconds."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self._clock = clock
        self._tokens = float(limit.burst)
        self._at = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.limit.burst), self._tokens + (now - self._at) / self.limit.interval)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


# -- basic_auth_users ------------------------------------------------------------------------

# $2a$/$2b$/$2y$, a two-digit cost, 22 characters of salt and 31 of hash in bcrypt's base64
# alphabet: checked without hashing (as the toolkit's bcrypt.Cost), so a slow hash costs
# nothing at start
BCRYPT_HASH = re.compile(r"\$2[aby]\$([0-9]{2})\$[./A-Za-z0-9]{53}")


def _users(path: str, section: object) -> Dict[str, bytes]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise WebConfigError(f"{path}: basic_auth_users must map user names to bcrypt hashes")
    users = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"{path}: basic_auth_users: invalid user name {user!r}")
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{path}: basic_auth_users.{user}: not a bcrypt hash")
        match = BCRYPT_HASH.fullmatch(hashed)
        if not match or not 4 <= int(match.group(1)) <= 31:
            raise WebConfigError(f"{path}: basic_auth_users.{user}: not a valid bcrypt hash")
        users[user] = hashed.encode()
    return users


# checked for an unknown user, so that a wrong name costs as long as a wrong password
# (a cost-10 hash of a string no one sends)
UNKNOWN_USER_HASH = b"$2b$10$G3gw/Ra2yFGdHPw24Gi8remQ9ayLpklfPBa4u6ebdx0qLpTYtqTJu"
CACHE_SIZE = 100


class Authenticator:
    """Checks `Authorization: Basic` headers against bcrypt hashes. bcrypt is slow on
    purpose (a cost of 18 takes seconds), so each outcome is remembered, keyed by a keyed
    digest of the user, the hash and the password (never in clear): a slow hash costs once
    per scraper, and a changed hash (a reloaded file) is checked again. One bcrypt runs at a
    time, so a flood of wrong passwords takes one core, not all."""

    def __init__(self, users: Mapping[str, bytes]):
        self.users = dict(users)
        self._key = os.urandom(32)
        self._cache: Dict[bytes, bool] = {}
        self._lock = threading.Lock()
        self._bcrypt = threading.Lock()

    def check(self, header: Optional[str], users: Optional[Mapping[str, bytes]] = None) -> Optional[str]:
        """The user name if the header carries valid credentials (for `users`, by default
        the ones given at construction), else None."""
        if not header or header[:6].lower() != "basic ":  # the scheme is case-insensitive (RFC 7617, and Go)
            return None
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        if not sep:
            return None
        known = self.users if users is None else users
        hashed = known.get(user)
        target = hashed if hashed is not None else UNKNOWN_USER_HASH
        digest = hmac.new(self._key, b"\0".join((user.encode(), target, password.encode())), hashlib.sha256).digest()
        with self._lock:
            ok = self._cache.get(digest)
        if ok is None:
            import bcrypt  # imported here: the health check never needs it

            with self._bcrypt:
                ok = bcrypt.checkpw(password.encode(), target)
            with self._lock:
                if len(self._cache) >= CACHE_SIZE:
                    self._cache.clear()
                self._cache[digest] = ok
        return user if ok and hashed is not None else None


# -- reload ----------------------------------------------------------------------------------

Signature = Tuple[Tuple[str, int, int, int], ...]


def signature(files: Tuple[str, ...]) -> Signature:
    """What changes when one of the files is rewritten or replaced (a Kubernetes Secret
    swaps a symlink: stat follows it)."""
    out = []
    for name in files:
        try:
            st = os.stat(name)
            out.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((name, -1, -1, -1))
    return tuple(out)


class Reloader:
    """The current web config: the file and the files it names are looked at (stat) at most
    every `every` seconds when asked for it, and read again when one changed. An invalid new
    version keeps the last good one, is logged once (an ERROR naming the key) and counted by
    `on_error`; TLS cannot be turned on or off without a restart."""

    def __init__(
        self,
        config: WebConfig,
        on_error: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        every: float = 1.0,
    ):
        self._config = config
        self._on_error = on_error
        self._clock = clock
        self._every = every
        self._seen = signature(config.files)
        self._next = clock() + every
        self._lock = threading.Lock()

    @property
    def last(self) -> WebConfig:
        """The configuration in use, without looking at the files."""
        return self._config

    def current(self) -> WebConfig:
        if self._clock() < self._next or not self._lock.acquire(blocking=False):
            return self._config  # looked at lately, or another thread is looking
        try:
            self._next = self._clock() + self._every
            now = signature(self._config.files)
            if now != self._seen:
                self._seen = now
                self._reload(now)
            return self._config
        finally:
            self._lock.release()

    def _reload(self, seen: Signature) -> None:
        old = self._config
        try:
            new = load(old.path)
            if (new.ssl_context is None) != (old.ssl_context is None):
                raise WebConfigError(f"{old.path}: TLS cannot be turned on or off without a restart")
        except WebConfigError as exc:
            log.error("web config not reloaded, the last good one stays in use: %s", exc)
            self._on_error()
            return
        self._config = new
        # taken before reading, so a change made while reading is read next time; the new
        # file may name other files
        self._seen = seen if new.files == old.files else signature(new.files)
        log.info("web config reloaded from %s", old.path)
