"""`--web.config.file` in the Prometheus exporter-toolkit format: TLS and basic auth with bcrypt hashes.

Operators already write this file for node_exporter and blackbox_exporter; accepting the same keys means
one habit, one review checklist. The subset implemented is what a stdlib HTTPS server can honour:
tls_server_config (cert_file, key_file, client_auth_type, client_ca_file, min_version, max_version) and
basic_auth_users. Like exporter-toolkit, the file and the certificate, key and CA files it names are checked
for changes on every connection and request, so rotating a certificate or a password needs no restart
(WebConfigWatcher); a broken new version is logged and the last good one kept. Whether the listener speaks
TLS at all is fixed at start-up, as in exporter-toolkit.

Basic auth follows exporter-toolkit's handler: an unknown user is checked against a dummy hash of the same
cost, so both answers take the same time; bcrypt runs one at a time (it costs ~70 ms at cost 10 by design, and
a flood of wrong passwords must not take every core); and results are cached, successes apart from failures
so a flood of wrong passwords cannot evict the right one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import re
import secrets
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from ruamel.yaml import YAML

log = logging.getLogger("desanet.webconfig")

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
# A modular-crypt bcrypt hash: $2a$, $2b$ or $2y$, a two-digit cost, 22 characters of salt and 31 of hash.
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
BCRYPT_MAX_BYTES = 72  # bcrypt reads no further; Go's x/crypto and bcrypt 5 refuse longer passwords
_CACHE_OK = 100  # as exporter-toolkit's cache size
_CACHE_FAILED = 1000


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


def _yaml_problem(path: str | os.PathLike[str], exc: Exception) -> str:
    """One line for a YAML error: ruamel's own text spans several lines with a quote of the file."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return f"{where}: not valid YAML: {problem}"


def parse_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and check the whole file; every problem is a WebConfigError with a one-line message."""
    try:
        data: Any = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise WebConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"{path}: not UTF-8 text") from None
    except Exception as exc:  # ruamel raises several error types for bad YAML
        raise WebConfigError(_yaml_problem(path, exc)) from None
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: must be a mapping")
    unknown = set(data) - _KNOWN_TOP
    if unknown:
        raise WebConfigError(f"{path}: unknown keys {sorted(unknown)}")
    cfg = WebConfig()
    tls = data.get("tls_server_config") or {}
    if not isinstance(tls, dict):
        raise WebConfigError(f"{path}: tls_server_config must be a mapping")
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
        m = _BCRYPT_RE.match(str(hashed))
        # Checked in full here: a truncated hash would otherwise make bcrypt raise inside a request.
        if m is None or not 4 <= int(m.group(1)) <= 31:
            raise WebConfigError(f"{path}: basic_auth_users.{user} is not a bcrypt hash (use htpasswd -nBC 10)")
        cfg.users[str(user)] = str(hashed).encode()
    if cfg.tls:
        try:
            cfg.ssl_context()  # fail now on unreadable or mismatched certificate files
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise WebConfigError(f"{path}: cannot load {_tls_files(cfg)}: {_ssl_reason(exc)}") from None
    return cfg


def _tls_files(cfg: WebConfig) -> str:
    files = [f for f in (cfg.cert_file, cfg.key_file, cfg.client_ca_file) if f]
    return ", ".join(files)


def _ssl_reason(exc: BaseException) -> str:
    """One line: strerror for a missing file, OpenSSL's reason (e.g. KEY_VALUES_MISMATCH) for a bad one."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@functools.lru_cache(maxsize=8)
def _dummy_hash(cost: int) -> bytes:
    """A hash of a random password at `cost`: what an unknown user's password is checked against."""
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))


class Authenticator:
    """Checks Authorization headers in the same time whether or not the user exists (see the module text)."""

    _bcrypt_lock = threading.Lock()  # one bcrypt at a time in the process, as exporter-toolkit's bcryptMtx

    def __init__(self, cfg: WebConfig):
        self.cfg = cfg
        costs = [int(h[4:6]) for h in cfg.users.values()]
        self._dummy = _dummy_hash(max(costs)) if costs else b""
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._failed: OrderedDict[bytes, None] = OrderedDict()
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
        known = self.cfg.users.get(user)
        hashed = known if known is not None else self._dummy
        # Cache a digest, never the password itself.
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed))).digest()
        with self._lock:
            if key in self._ok:
                return True
            if key in self._failed:
                return False
        secret = password.encode()
        with self._bcrypt_lock:
            # Longer than bcrypt reads is never right (bcrypt 5 raises): the same work, then no.
            ok = bcrypt.checkpw(secret[:BCRYPT_MAX_BYTES], hashed) and len(secret) <= BCRYPT_MAX_BYTES
        ok = ok and known is not None
        with self._lock:
            cache, size = (self._ok, _CACHE_OK) if ok else (self._failed, _CACHE_FAILED)
            cache[key] = None
            while len(cache) > size:
                cache.popitem(last=False)
        return ok


@dataclass(frozen=True)
class LiveConfig:
    """What the server uses now: the parsed file, its authenticator and (with TLS) the SSL context."""

    cfg: WebConfig
    auth: Authenticator
    ssl_context: ssl.SSLContext | None


def _signature(paths: list[str | None]) -> tuple[tuple[int, int, int] | None, ...]:
    out: list[tuple[int, int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p) if p else None
        except OSError:
            st = None
        out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
    return tuple(out)


class WebConfigWatcher:
    """The web config as of now: re-read when the file or a certificate, key or CA file it names changes.

    A stat of four files per connection costs microseconds; a broken new version (a key written before its
    certificate, a YAML typo) is logged once and the last good version kept, so a rotation in progress never
    locks out Prometheus."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = str(path)
        cfg = parse_web_config(self.path)  # raises WebConfigError: start-up refuses a broken file
        self._live = LiveConfig(cfg, Authenticator(cfg), cfg.ssl_context() if cfg.tls else None)
        self._sig = self._files_signature(cfg)
        self._bad_sig: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        self.reloads = 0
        self.failures = 0

    @property
    def tls(self) -> bool:
        return self._live.ssl_context is not None

    def _files_signature(self, cfg: WebConfig) -> tuple[Any, ...]:
        return _signature([self.path, cfg.cert_file, cfg.key_file, cfg.client_ca_file])

    def current(self) -> LiveConfig:
        with self._lock:
            live = self._live
            sig = self._files_signature(live.cfg)
            if sig == self._sig or sig == self._bad_sig:
                return live
            try:
                cfg = parse_web_config(self.path)
                if cfg.tls != live.cfg.tls:
                    raise WebConfigError(
                        f"{self.path}: TLS cannot be switched {'on' if cfg.tls else 'off'} without a restart"
                    )
                new = LiveConfig(cfg, Authenticator(cfg), cfg.ssl_context() if cfg.tls else None)
            except (WebConfigError, OSError, ssl.SSLError, ValueError) as exc:
                self._bad_sig = sig
                self.failures += 1
                reason = str(exc) if isinstance(exc, WebConfigError) else _ssl_reason(exc)
                log.error("web config not reloaded; keeping the previous one", extra={"reason": reason})
                return live
            self._live, self._sig, self._bad_sig = new, self._files_signature(cfg), None
            self.reloads += 1
            log.info("web config reloaded", extra={"file": self.path, "tls": cfg.tls, "users": len(cfg.users)})
            return new
