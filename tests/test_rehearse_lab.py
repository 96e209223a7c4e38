"""The rehearsal page in the lab (issue 14): `desanet serve` in the NOC namespace, a headless Chromium in a
village's namespace opening http(s)://NOC/rehearse/VILLAGE as a kantor desa's browser would, a real call
through the village's path, and its outcome on /metrics.

Calls are made at 640x360, 1000 kbit/s (the test inventory gives every profile that picture, as
tests/test_calls_lab.py does with --video: a 720p call on a shared two-core host starves the CPU, which
Chrome reads as congestion). Calls on a host take turns (calls/run.py's lock) and a rehearsal never waits
for one under way (it is refused "busy" at once), so the tests open the page when the lock is free and
open it again if another call took the lock first.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import random
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import bcrypt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from desanet.calls import y4m
from desanet.calls.browser import Browser, find_chromium
from desanet.calls.run import LOCK_PATH
from desanet.lab.netns import run_in_netns
from desanet.lab.topology import NOC_ADDR
from tests.conftest import stop_process

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.timeout(1500),  # the lab's start, and calls queued on the host's lock behind other work
    pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (scripts/setup.sh installs Debian's chromium)"),
]

VILLAGE = "kalibaru-manis"
IN_SESSION = "licin"
OTHER = "kepatihan"
USER, PASSWORD = "teknisi", "rahasia-desa"
SESSION_TITLE = "Musrenbangdes Licin (uji)"


class Serve:
    """`desanet serve` in the lab's NOC namespace, stopped by its PID."""

    def __init__(self, lab: Any, tmp: Path, web_config: Path | None = None):
        self.lab, self.tmp = lab, tmp
        self.port = random.randint(20000, 40000)
        self.scheme = "https" if web_config else "http"
        self.origin = f"{self.scheme}://{NOC_ADDR}:{self.port}"
        self.log = tmp / "serve.log"
        self.auth = web_config is not None
        argv = [
            "ip", "netns", "exec", lab.noc_ns, sys.executable, "-m", "desanet.cli", "serve",
            "--inventory", str(_inventory(lab, tmp)), "--probes", "icmp",
            "--web.listen-address", f"{NOC_ADDR}:{self.port}",
            *(["--web.config.file", str(web_config)] if web_config else []),
        ]  # fmt: skip
        env = {**lab.env, "DESANET_STATE_DIR": str(tmp / "state")}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            if self.get("/-/healthy")[0] == 200:
                return
            time.sleep(0.5)
        raise AssertionError("serve did not answer within 60 s:\n" + self.log.read_text())

    def get(self, path: str, lang: str | None = None, auth: bool = True) -> tuple[int, str, dict[str, str]]:
        """A GET from inside the NOC namespace (as Prometheus or a NOC browser would)."""

        def fetch() -> tuple[int, str, dict[str, str]]:
            req = urllib.request.Request(self.origin + path)
            if self.auth and auth:
                req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
            if lang:
                req.add_header("Accept-Language", lang)
            ctx = None
            if self.scheme == "https":
                ctx = ssl.create_default_context(cafile=str(self.tmp / "cert.pem"))
                ctx.check_hostname = False
            try:
                with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                    return r.status, r.read().decode(), dict(r.headers)
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode(), dict(e.headers)
            except OSError:
                return 0, "", {}

        return run_in_netns(self.lab.noc_ns, fetch)

    def metrics(self) -> str:
        code, body, _ = self.get("/metrics")
        assert code == 200, body
        return body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(40)  # a call under way is hung up and its far end stopped first
        stop_process(self.proc)  # type: ignore[arg-type]


def _inventory(lab: Any, tmp: Path) -> Path:
    """The lab's inventory with every profile's call at 640x360, 1000 kbit/s, and one session running now (for
    IN_SESSION alone), so no shipped weekly session decides what the tests see."""
    doc = yaml.safe_load(Path(lab.inventory).read_text())
    for p in doc["profiles"]:
        p.update(video_width=640, video_height=360, video_fps=30, video_kbit=1000)
    now = dt.datetime.now(ZoneInfo("Asia/Jakarta")).replace(tzinfo=None, microsecond=0)
    doc["sessions"] = [
        {
            "title": SESSION_TITLE,
            "start": (now - dt.timedelta(minutes=10)).isoformat(),
            "duration_minutes": 120,
            "villages": [IN_SESSION],
        }
    ]
    path = tmp / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture(scope="module")
def serve(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    s = Serve(lab, tmp_path_factory.mktemp("rehearse"))
    try:
        yield s
    finally:
        s.stop()


def _lock_free(deadline: float) -> None:
    """Wait until no call holds the host's lock (the calibration's or a lab test's calls take turns on it)."""
    with LOCK_PATH.open("a") as f:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.25)
                continue
            fcntl.flock(f, fcntl.LOCK_UN)
            return
    raise AssertionError("the host's call lock stayed taken")


def rehearse(lab: Any, serve: Serve, query: str, extra: tuple[str, ...] = (), during: Any = None) -> str:
    """Open the rehearsal page in the village's namespace (again if another call took the host first), wait for
    the judged call on /metrics and return the scrape. `during(serve)` runs while the call is under way."""
    chromium = find_chromium()
    assert chromium is not None
    video = y4m.write(serve.tmp / "camera.y4m", 640, 360, 30)  # the village's "webcam", as in the lab call
    url = f"{serve.origin}/rehearse/{VILLAGE}?{query}"
    if serve.auth:
        url = url.replace("://", f"://{USER}:{PASSWORD}@", 1)
    deadline = time.monotonic() + 900
    while True:
        _lock_free(deadline)
        admitted = serve.log.read_text().count('msg="rehearsal call admitted"')
        refused = serve.log.read_text().count("reason=busy")
        b = Browser.start(
            chromium, url, serve.origin, video, prefix=["ip", "netns", "exec", lab.village_ns(VILLAGE)], extra=extra
        )
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 20:
                text = serve.log.read_text()
                if text.count('msg="rehearsal call admitted"') > admitted or text.count("reason=busy") > refused:
                    break
                time.sleep(0.3)
            text = serve.log.read_text()
            if text.count('msg="rehearsal call admitted"') == admitted:
                assert text.count("reason=busy") > refused, f"the page never reached serve: {b.log_tail(5)}\n{text}"
                assert time.monotonic() < deadline
                continue  # another call took the host between the check and the page: open it again
            if during is not None:
                during(serve)
            while time.monotonic() < deadline:
                body = serve.metrics()
                if f'desanet_call_last_timestamp_seconds{{village="{VILLAGE}"' in body:
                    time.sleep(3)  # the page fetches its outcome
                    return serve.metrics()
                assert b.proc.poll() is None, b.log_tail(5)
                time.sleep(2)
            raise AssertionError("no judged call on /metrics:\n" + serve.log.read_text()[-3000:])
        finally:
            b.stop()


def _value(body: str, name: str, direction: str | None = None, **labels: str) -> float:
    """The value of the one series of `name` for VILLAGE (and `direction`), or of the series with `labels`."""
    for ln in body.splitlines():
        if not ln.startswith(name + "{"):
            continue
        want = [f'{k}="{v}"' for k, v in labels.items()] or [f'village="{VILLAGE}"']
        if direction:
            want.append(f'direction="{direction}"')
        if all(w in ln for w in want):
            return float(ln.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels or VILLAGE} {direction or ''} in the scrape")


def _measured(serve: Serve) -> str:
    lines = [ln for ln in serve.log.read_text().splitlines() if "rehearsal call judged" in ln]
    return lines[-1] if lines else "(no judged call in the log)"


def _no_farend(serve: Serve) -> bool:
    """No Chromium left with serve's origin on its command line (the calibration's browsers are not ours)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"chromium" in cmdline and serve.origin.encode() in cmdline:
            return False
    return True


def test_unknown_village_and_a_village_in_session_are_refused_with_the_reason(serve: Serve) -> None:
    code, body, _ = serve.get("/rehearse/atlantis?lang=en")
    assert code == 404 and "no village “atlantis”" in body
    code, body, headers = serve.get(f"/rehearse/{IN_SESSION}", lang="id-ID,id;q=0.9")
    assert code == 409 and f"sedang dalam sesi “{SESSION_TITLE}”" in body, body
    assert f"/rehearse/{IN_SESSION}?force=1" in body and int(headers["Retry-After"]) > 3000
    m = serve.metrics()
    assert _value(m, "desanet_rehearsal_refusals_total", reason="unknown_village") == 1
    assert _value(m, "desanet_rehearsal_refusals_total", reason="session") == 1


def test_a_rehearsal_with_the_test_pattern_on_a_clean_link_holds_and_reaches_metrics(lab: Any, serve: Serve) -> None:
    busy: list[tuple[int, str]] = []

    def second_call(s: Serve) -> None:
        code, body, _ = s.get(f"/rehearse/{OTHER}?lang=en")
        busy.append((code, body))

    m = rehearse(lab, serve, "source=pattern&lang=id", during=second_call)
    print("\nrehearsal (test pattern, http):", _measured(serve))
    for d in ("up", "down"):
        assert _value(m, "desanet_call_outcome", d) == 0, _measured(serve)
        assert _value(m, "desanet_call_video_height_pixels", d) == 360
        assert _value(m, "desanet_call_frames_per_second", d) >= 24
    assert 0 < _value(m, "desanet_call_setup_seconds") < 8
    assert _value(m, "desanet_call_info", "up") == 1 and 'limitation="' in m
    assert _value(m, "desanet_rehearsal_calls_total", outcome="holds") == 1
    assert busy and busy[0][0] == 503 and "Another call is under way" in busy[0][1], busy
    assert _value(m, "desanet_rehearsal_refusals_total", reason="busy") >= 1
    promtool = shutil.which("promtool")
    if promtool:
        out = subprocess.run([promtool, "check", "metrics"], input=m, capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    assert _no_farend(serve)  # stopped by its PID when the call ended


def _tls_web_config(tmp: Path) -> tuple[Path, str]:
    """A self-signed certificate for the NOC's name (not the address the browsers use) and one user."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "noc.desanet.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("noc.desanet.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    (tmp / "web.yml").write_text(
        f"tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  {USER}: {hashed}\n"
    )
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return tmp / "web.yml", base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_a_camera_rehearsal_over_tls_and_basic_auth(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The far end reaches serve's TLS listener (serve's key pinned) without the password it cannot have; the
    village's browser logs in as the technician and trusts the NOC's certificate (a kantor desa's browser would
    trust the district's CA; the test pins the key the same way)."""
    tmp = tmp_path_factory.mktemp("rehearse-tls")
    web, pin = _tls_web_config(tmp)
    s = Serve(lab, tmp, web)
    try:
        assert s.get(f"/rehearse/{VILLAGE}", auth=False)[0] == 401  # no password, no page, no call
        m = rehearse(lab, s, "source=camera&lang=en", extra=(f"--ignore-certificate-errors-spki-list={pin}",))
        print("\nrehearsal (camera, https + basic auth):", _measured(s))
        for d in ("up", "down"):
            assert _value(m, "desanet_call_outcome", d) == 0, _measured(s)
    finally:
        s.stop()
    assert "Traceback" not in s.log.read_text()
    assert _no_farend(s)
