"""`--web.config.file` in the Prometheus exporter-toolkit format: TLS and basic auth with bcrypt hashes.

Operators already write this file for node_exporter and blackbox_exporter; accepting the same keys means
one habit, one review checklist. The subset implemented is what a stdlib HTTPS server can honour:
tls_server_config (cert_file, key_file, client_auth_type, client_ca_file, min_version, max_version) and
basic_auth_users. Like exporter-toolkit, the file is re-read when it changes, so rotating a certificate or a
password needs no restart.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from ruamel.yaml import YAML

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_KNOWN_TOP = {"tls_server_config", "basic_auth_users", "http_server_config"}
_KNOWN_TLS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}


class WebConfigError(Exception):
    pass


@dataclass
class WebConfig:
    cert_file: str | None = None
    key_file: str | None = None
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    users: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _TLS_VERSIONS[self.min_version]
        ctx.maximum_version = _TLS_VERSIONS[self.max_version]
        assert self.cert_file and self.key_file
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.verify_mode = _CLIENT_AUTH[self.client_auth_type]
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
        return ctx


def parse_web_config(path: str | os.PathLike[str]) -> WebConfig:
    try:
        data: Any = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise WebConfigError(f"{path}: {exc.strerror}") from None
    except Exception as exc:  # ruamel raises several error types for bad YAML
        raise WebConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: must be a mapping")
    unknown = set(data) - _KNOWN_TOP
    if unknown:
        raise WebConfigError(f"{path}: unknown keys {sorted(unknown)}")
    cfg = WebConfig()
    tls = data.get("tls_server_config") or {}
    if tls:
        bad = set(tls) - _KNOWN_TLS
        if bad:
            raise WebConfigError(f"{path}: tls_server_config: unsupported keys {sorted(bad)}")
        if not tls.get("cert_file") or not tls.get("key_file"):
            raise WebConfigError(f"{path}: tls_server_config needs cert_file and key_file")
        base = Path(path).parent
        cfg.cert_file = str(base / tls["cert_file"])
        cfg.key_file = str(base / tls["key_file"])
        if tls.get("client_ca_file"):
            cfg.client_ca_file = str(base / tls["client_ca_file"])
        cfg.client_auth_type = tls.get("client_auth_type", cfg.client_auth_type)
        cfg.min_version = tls.get("min_version", cfg.min_version)
        cfg.max_version = tls.get("max_version", cfg.max_version)
        if cfg.client_auth_type not in _CLIENT_AUTH:
            raise WebConfigError(f"{path}: unknown client_auth_type {cfg.client_auth_type!r}")
        for v in (cfg.min_version, cfg.max_version):
            if v not in _TLS_VERSIONS:
                raise WebConfigError(f"{path}: unknown TLS version {v!r}")
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"{path}: basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        h = str(hashed).encode()
        if not h.startswith((b"$2a$", b"$2b$", b"$2y$")):
            raise WebConfigError(f"{path}: basic_auth_users.{user} is not a bcrypt hash (use htpasswd -nBC 10)")
        cfg.users[str(user)] = h
    if cfg.tls:
        cfg.ssl_context()  # fail now on unreadable or mismatched certificate files
    return cfg


class Authenticator:
    """Checks Authorization headers; caches successful checks because bcrypt costs ~50 ms by design."""

    def __init__(self, cfg: WebConfig):
        self.cfg = cfg
        self._ok: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        if not self.cfg.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.cfg.users.get(user)
        if hashed is None:
            return False
        # Cache a digest, never the password itself (exporter-toolkit does the same).
        key = (user, hashlib.sha256(user.encode() + b"\0" + password.encode() + b"\0" + hashed).digest())
        with self._lock:
            if key in self._ok:
                return True
        if bcrypt.checkpw(password.encode(), hashed):
            with self._lock:
                self._ok.add(key)
            return True
        return False
