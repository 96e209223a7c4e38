"""`desanet serve --web.config.file`: TLS and basic auth as exporter-toolkit users expect, on a live server.

Runs on 127.0.0.1 only. In the test suite's empty network namespace the villages are unreachable, which is
fine: this is about who may read the metrics, not what they say.
"""

from __future__ import annotations

import base64
import datetime as dt
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import LAB_SECRETS, ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(tmp: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp = tmp_path_factory.mktemp("web")
    _self_signed(tmp)
    hashed = bcrypt.hashpw(b"rahasia-noc", bcrypt.gensalt(rounds=4)).decode()
    (tmp / "web.yml").write_text(
        f"tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  noc: {hashed}\n"
    )
    port = _free_port()
    with open(tmp / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "desanet.cli", "serve", "--inventory", str(ROOT / "inventory.yaml"),
             "--probes", "snmp", "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file",
             str(tmp / "web.yml")],
            stdout=log, stderr=subprocess.STDOUT, env={**__import__("os").environ, **LAB_SECRETS},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, (tmp / "serve.log").read_text()
            time.sleep(0.2)
        yield port, tmp
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def _get(port: int, tmp: Path, path: str, auth: tuple[str, str] | None) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
    req = urllib.request.Request(f"https://localhost:{port}{path}")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_tls_with_the_right_password_serves_metrics(server: tuple[int, Path]) -> None:
    port, tmp = server
    code, body = _get(port, tmp, "/metrics", ("noc", "rahasia-noc"))
    assert code == 200 and "desanet_build_info" in body


@pytest.mark.parametrize("auth", [None, ("noc", "salah"), ("tamu", "rahasia-noc")])
def test_wrong_or_missing_credentials_are_refused(server: tuple[int, Path], auth: tuple[str, str] | None) -> None:
    port, tmp = server
    for path in ("/metrics", "/", "/probe?target=kabat&module=icmp"):
        code, _ = _get(port, tmp, path, auth)
        assert code == 401


def test_plain_http_gets_no_metrics(server: tuple[int, Path]) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        try:
            data = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            data = b""
    assert b"desanet_" not in data


def test_a_silent_client_does_not_stall_the_server(server: tuple[int, Path]) -> None:
    port, tmp = server
    with socket.create_connection(("127.0.0.1", port), timeout=5):  # connects, never says a word
        t0 = time.monotonic()
        code, _ = _get(port, tmp, "/-/healthy", ("noc", "rahasia-noc"))
        assert code == 200 and time.monotonic() - t0 < 5
