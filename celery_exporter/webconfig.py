"""TLS and basic auth for the HTTP endpoints, from a web config file in the format of the
Prometheus exporter-toolkit, so operators reuse what they already write for node_exporter:

    tls_server_config:
      cert_file: /etc/celery-exporter/tls.crt
      key_file: /etc/celery-exporter/tls.key
      client_auth_type: RequireAndVerifyClientCert   # optional, default NoClientCert
      client_ca_file: /etc/celery-exporter/ca.crt     # needed for client certificates
      min_version: TLS12                              # optional: TLS10..TLS13
    basic_auth_users:
      prometheus: $2y$10$...                          # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')

Python's ssl module verifies every client certificate it receives against the CA, so
RequireAnyClientCert behaves as RequireAndVerifyClientCert and RequestClientCert as
VerifyClientCertIfGiven.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
import ssl
import threading
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import bcrypt
import yaml


class WebConfigError(ValueError):
    """A web config file that cannot be used; the message names the file and the key."""


CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
}


@dataclasses.dataclass(frozen=True)
class WebConfig:
    path: str
    ssl_context: Optional[ssl.SSLContext]
    users: Mapping[str, bytes]  # user -> bcrypt hash
    # tls_server_config's cert_file and key_file, resolved: the health check compares the
    # certificate the server presents with cert_file (celery_exporter/healthcheck.py)
    tls_files: Optional[Tuple[str, str]] = None

    @property
    def auth_required(self) -> bool:
        return bool(self.users)


def load(path: str) -> WebConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: expected a mapping at the top")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise WebConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(TOP_KEYS))})")
    base = Path(path).resolve().parent
    context, files = _tls(path, base, data.get("tls_server_config"))
    users = _users(path, data.get("basic_auth_users"))
    return WebConfig(path=path, ssl_context=context, users=users, tls_files=files)


def _file(path: str, base: Path, key: str, value: object) -> str:  # value: parsed YAML
    if not isinstance(value, str) or not value:
        raise WebConfigError(f"{path}: tls_server_config.{key} must be a file name")
    resolved = Path(value) if Path(value).is_absolute() else base / value  # relative to the config file
    if not resolved.is_file():
        raise WebConfigError(f"{path}: tls_server_config.{key}: no such file {str(resolved)!r}")
    return str(resolved)


def _tls(path: str, base: Path, section: object) -> Tuple[Optional[ssl.SSLContext], Optional[Tuple[str, str]]]:
    if section is None:
        return None, None
    if not isinstance(section, dict):
        raise WebConfigError(f"{path}: tls_server_config must be a mapping")
    unknown = set(section) - TLS_KEYS
    if unknown:
        raise WebConfigError(f"{path}: unknown key tls_server_config.{sorted(unknown)[0]}")
    cert = _file(path, base, "cert_file", section.get("cert_file"))
    key = _file(path, base, "key_file", section.get("key_file"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise WebConfigError(f"{path}: tls_server_config: cannot load cert_file/key_file: {exc}") from None
    auth = section.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(
            f"{path}: tls_server_config.client_auth_type {auth!r} is not one of {', '.join(CLIENT_AUTH)}"
        )
    context.verify_mode = CLIENT_AUTH[auth]
    if "client_ca_file" in section:
        ca = _file(path, base, "client_ca_file", section["client_ca_file"])
        try:
            context.load_verify_locations(ca)
        except (ssl.SSLError, OSError) as exc:
            raise WebConfigError(f"{path}: tls_server_config.client_ca_file: {exc}") from None
    elif context.verify_mode != ssl.CERT_NONE:
        raise WebConfigError(f"{path}: tls_server_config.client_auth_type {auth} needs client_ca_file")
    for field, setter in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if field in section:
            version = TLS_VERSIONS.get(section[field])
            if version is None:
                raise WebConfigError(
                    f"{path}: tls_server_config.{field} {section[field]!r} is not one of {', '.join(TLS_VERSIONS)}"
                )
            setattr(context, setter, version)
    if context.minimum_version < ssl.TLSVersion.TLSv1_2 and "min_version" not in section:
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # exporter-toolkit's default too
    return context, (cert, key)


# $2y$, two-digit cost, 22 characters of salt and 31 of hash in bcrypt's base64 alphabet
BCRYPT_HASH = re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")


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
        # the shape checked first: bcrypt before 4.3 panics (a BaseException) on a short hash
        if not BCRYPT_HASH.fullmatch(hashed):
            raise WebConfigError(f"{path}: basic_auth_users.{user}: not a valid bcrypt hash")
        try:
            bcrypt.checkpw(b"", hashed.encode())  # a malformed hash raises here, not at the first scrape
        except ValueError:
            raise WebConfigError(f"{path}: basic_auth_users.{user}: not a valid bcrypt hash") from None
        users[user] = hashed.encode()
    return users


class Authenticator:
    """Checks `Authorization: Basic` headers. bcrypt costs tens of milliseconds on purpose,
    so a header that passed once is remembered (by a keyed digest, never in clear)."""

    def __init__(self, users: Mapping[str, bytes]):
        self.users = dict(users)
        # checked for unknown users too, so a wrong name costs as long as a wrong password
        self._dummy = bcrypt.hashpw(b"celery-exporter", bcrypt.gensalt(rounds=10))
        self._key = hashlib.sha256(b"".join(sorted(self.users.values())) + bytes(16)).digest()
        self._ok: Dict[bytes, str] = {}
        self._lock = threading.Lock()

    def check(self, header: Optional[str]) -> Optional[str]:
        """The user name if the header carries valid credentials, else None."""
        if not header or not header.startswith("Basic "):
            return None
        token = header[6:].strip().encode()
        digest = hmac.new(self._key, token, hashlib.sha256).digest()
        with self._lock:
            user = self._ok.get(digest)
        if user is not None:
            return user
        try:
            user, _, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        hashed = self.users.get(user)
        if not bcrypt.checkpw(password.encode(), hashed or self._dummy) or hashed is None:
            return None
        with self._lock:
            if len(self._ok) > 64:
                self._ok.clear()
            self._ok[digest] = user
        return user
