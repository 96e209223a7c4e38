"""`desanet serve --web.config.file`: TLS and basic auth as exporter-toolkit users expect, on a live server.

Runs on 127.0.0.1 only. In the test suite's empty network namespace the villages are unreachable, which is
fine: this is about who may read the metrics, not what they say.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import signal
import socket
import ssl
import statistics
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

from desanet.exporter.server import RENDER_MAX_AGE_SECONDS
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
    hashed = bcrypt.hashpw(b"rahasia-noc", bcrypt.gensalt(rounds=10)).decode()  # htpasswd -nBC 10, as documented
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
    code, body, _ = _get_full(port, tmp, path, auth)
    return code, body


def _get_full(port: int, tmp: Path, path: str, auth: tuple[str, str] | None) -> tuple[int, str, dict[str, str]]:
    ctx = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
    req = urllib.request.Request(f"https://localhost:{port}{path}")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


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


NOC = ("noc", "rahasia-noc")


def test_a_password_longer_than_bcrypt_reads_gets_401(server: tuple[int, Path]) -> None:
    """bcrypt 5 raises past 72 bytes: the handler died and the client got no answer at all."""
    port, tmp = server
    assert _get(port, tmp, "/metrics", ("noc", "x" * 100))[0] == 401
    assert _get(port, tmp, "/metrics", ("tamu", "x" * 100))[0] == 401


def test_an_unknown_user_takes_as_long_as_a_wrong_password(server: tuple[int, Path]) -> None:
    """Over real TLS: an unknown user was answered 100 times faster than a known one (0.55 vs 72 ms)."""
    port, tmp = server

    def median_seconds(user: str) -> float:
        times = []
        for i in range(5):
            t0 = time.perf_counter()
            assert _get(port, tmp, "/-/healthy", (user, f"salah-{i}-{time.time_ns()}"))[0] == 401
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    known, unknown = median_seconds("noc"), median_seconds("tamu")
    assert unknown > 0.5 * known and known > 0.01, (known, unknown)


def test_empty_module_is_refused_not_taken_for_icmp(server: tuple[int, Path]) -> None:
    port, tmp = server
    code, body = _get(port, tmp, "/probe?target=kabat&module=", NOC)
    assert code == 400 and "Unknown module ''" in body


def test_on_demand_probes_are_limited_per_village(server: tuple[int, Path]) -> None:
    """The second STAMP of a village within its allowance is refused at once, with the reason and Retry-After;
    another village is not affected. (In the test's empty namespace the probes themselves fail: no route.)"""
    port, tmp = server
    first = _get_full(port, tmp, "/probe?target=licin&module=stamp", NOC)
    assert first[0] == 200 and "probe_success" in first[1]
    code, body, headers = _get_full(port, tmp, "/probe?target=licin&module=stamp", NOC)
    assert code == 429 and body.startswith("refused: licin had an on-demand stamp probe")
    assert 1 <= int(headers["Retry-After"]) <= 30
    assert _get(port, tmp, "/probe?target=kalipuro&module=stamp", NOC)[0] == 200
    assert 'desanet_probe_requests_refused_total{module="stamp",reason="rate"} 1.0' in _metrics_soon(port, tmp)


def test_scheduled_snmp_failures_are_logged(server: tuple[int, Path]) -> None:
    """They reached the status page but never the log, unlike every other probe's failures."""
    _, tmp = server
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        text = (tmp / "serve.log").read_text()
        if 'msg="probe failed"' in text and "probe=snmp" in text:
            break
        time.sleep(0.5)
    line = next((ln for ln in text.splitlines() if 'msg="probe failed"' in ln and "probe=snmp" in ln), "")
    assert "village=" in line and "reason=" in line, text[-2000:]


def test_a_failed_tls_handshake_is_one_log_line(server: tuple[int, Path]) -> None:
    port, tmp = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # plain HTTP to the TLS port
        with contextlib.suppress(OSError):
            s.recv(4096)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "TLS handshake failed" not in (tmp / "serve.log").read_text():
        time.sleep(0.1)
    text = (tmp / "serve.log").read_text()
    assert 'msg="TLS handshake failed"' in text and "Traceback" not in text, text[-3000:]


def _peer_certificate(port: int, tmp: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_renewed_certificate_is_served_without_a_restart(server: tuple[int, Path]) -> None:
    """The code said rotation needs no restart; the context was made once. A new connection now gets the new
    certificate; the moment between the new key and the new certificate keeps the old pair serving."""
    port, tmp = server
    old = _peer_certificate(port, tmp)
    new_dir = tmp / "renewed"
    new_dir.mkdir()
    _self_signed(new_dir)
    os.replace(new_dir / "key.pem", tmp / "key.pem")  # key first: for a moment, key and certificate disagree
    assert _get(port, tmp, "/-/healthy", NOC)[0] == 200  # the old pair serves; the mismatch is logged
    os.replace(new_dir / "cert.pem", tmp / "cert.pem")
    new = (tmp / "cert.pem").read_bytes()
    want = ssl.PEM_cert_to_DER_cert(new.decode())
    deadline = time.monotonic() + 10
    got = old
    while time.monotonic() < deadline and got != want:
        time.sleep(0.2)
        got = _peer_certificate(port, tmp)
    assert got == want != old
    assert 'desanet_web_config_reloads_total{result="success"} 1.0' in _metrics_soon(port, tmp)


def test_a_web_config_removed_or_broken_keeps_the_last_good_one(server: tuple[int, Path]) -> None:
    """Every request stat()ed the file and raised when it was gone: no answer at all, for anyone."""
    port, tmp = server
    good = (tmp / "web.yml").read_text()
    try:
        (tmp / "web.yml").unlink()
        assert _get(port, tmp, "/-/healthy", NOC)[0] == 200
        assert _get(port, tmp, "/-/healthy", None)[0] == 401  # still behind the old users, not open
        (tmp / "web.yml").write_text("basic_auth_users: {noc: [\n")
        assert _get(port, tmp, "/-/healthy", NOC)[0] == 200
    finally:
        (tmp / "web.yml").write_text(good)
    log = (tmp / "serve.log").read_text()
    assert 'msg="web config not reloaded; keeping the previous one"' in log and "not valid YAML" in log


def _metrics_soon(port: int, tmp: Path) -> str:
    """/metrics once a body rendered after now is served (a body up to RENDER_MAX_AGE_SECONDS old is reused)."""
    time.sleep(RENDER_MAX_AGE_SECONDS + 0.1)
    code, body = _get(port, tmp, "/metrics", NOC)
    assert code == 200
    return body


@pytest.mark.parametrize(
    ("web_yml", "message"),
    [
        ("basic_auth_users: {noc: [\n", "not valid YAML"),
        ("tls_server_config: {cert_file: nowhere.pem, key_file: nowhere.key}\n", "No such file or directory"),
        ("basic_auth_users:\n  noc: $2y$10$cut-short\n", "not a bcrypt hash"),
        ("tls_server_config: {cert_file: cert.pem, key_file: other-key.pem}\n", "cannot load"),
    ],
)
def test_a_broken_web_config_refuses_to_start_in_one_line(tmp_path: Path, web_yml: str, message: str) -> None:
    """Before, the monitor started probing and the web config then failed with a multi-line traceback."""
    _self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _self_signed(other)
    (tmp_path / "other-key.pem").write_bytes((other / "key.pem").read_bytes())  # a key of another certificate
    (tmp_path / "web.yml").write_text(web_yml)
    proc = subprocess.run(
        [sys.executable, "-m", "desanet.cli", "serve", "--inventory", str(ROOT / "inventory.yaml"),
         "--web.listen-address", f"127.0.0.1:{_free_port()}", "--web.config.file", str(tmp_path / "web.yml")],
        capture_output=True, text=True, timeout=60, env={**os.environ, **LAB_SECRETS},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("desanet serve: "), proc.stderr
