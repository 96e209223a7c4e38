"""desanet/calls without a lab: the test pattern, the call server over real HTTP on 127.0.0.1 (signalling, stats,
bad input answered and survived), the one-call lock, and a real headless Chromium stopped by PID with its
profile removed."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from desanet.calls import y4m
from desanet.calls.browser import Browser, find_chromium
from desanet.calls.run import CallError, one_call_at_a_time
from desanet.calls.server import CallDesk, CallServer


def test_test_pattern_is_a_moving_420_y4m(tmp_path: Path) -> None:
    path = y4m.write(tmp_path / "p.y4m", 64, 36, 15, frames=4)
    data = path.read_bytes()
    header, _, rest = data.partition(b"\n")
    assert header == b"YUV4MPEG2 W64 H36 F15:1 Ip A1:1 C420jpeg"
    frame = 64 * 36 * 3 // 2
    assert len(rest) == 4 * (len(b"FRAME\n") + frame)
    frames = [rest[i * (6 + frame) + 6 : (i + 1) * (6 + frame)] for i in range(4)]
    assert len(set(frames)) == 4  # it moves
    assert len(set(frames[0][: 64 * 36])) > 20  # and is textured, not flat
    with pytest.raises(ValueError, match="even"):
        y4m.write(tmp_path / "q.y4m", 63, 36, 15)


def _req(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, bytes]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def server() -> Any:
    s = CallServer("127.0.0.1").start()
    s.add_call("c1", 640, 360, 30, 1000)
    yield s
    s.close()


def test_signalling_and_stats_round_trip(server: CallServer) -> None:
    base = f"{server.origin}/call/c1"
    code, page = _req(f"{base}/page/village")
    assert code == 200 and b'"role": "village"' in page and b'"kbit": 1000' in page
    assert _req(f"{base}/signal/village")[0] == 204  # no offer yet
    assert _req(f"{base}/signal/village", {"type": "offer", "sdp": "v=0"}) == (200, b'{"stop": false}')
    assert json.loads(_req(f"{base}/signal/village")[1]) == {"type": "offer", "sdp": "v=0"}
    assert _req(f"{base}/stats/farend", {"t": 1.0, "in_video": {"framesDecoded": 3}})[0] == 200
    server.stop_call("c1")
    assert json.loads(_req(f"{base}/stats/farend", {"t": 2.0})[1]) == {"stop": True}
    snap = server.snapshot("c1")
    assert [s["t"] for s in snap.samples["farend"]] == [1.0, 2.0] and "village" in snap.opened


@pytest.mark.parametrize(
    ("path", "raw", "code", "words"),
    [
        ("/call/c1/stats/farend", b"not json", 400, b"not a JSON object"),
        ("/call/c1/stats/farend", b"[1, 2]", 400, b"not a JSON object"),
        ("/call/c1/stats/farend", b"x" * 300_000, 400, b"bad request"),
        ("/call/nope/stats/farend", b"{}", 404, b"no such call"),
        ("/call/c1/stats/someone", b"{}", 404, b"no such path"),
        ("/call/c1/page/village/../../etc", None, 404, b"no such path"),
    ],
)
def test_bad_input_gets_a_one_line_answer_and_the_server_goes_on(
    server: CallServer, path: str, raw: bytes | None, code: int, words: bytes
) -> None:
    got, body = _req(server.origin + path, raw=raw)
    assert got == code and words in body and body.count(b"\n") == 0
    assert _req(f"{server.origin}/call/c1/signal/farend")[0] == 204  # still serving


def test_page_config_cannot_close_its_script_element(server: CallServer) -> None:
    server.add_call("c2", 640, 360, 30, 1000)
    page = _req(f"{server.origin}/call/c2/page/farend")[1].decode()
    assert page.count("</script>") == 2 and '"call_id": "c2"' in page


def test_one_call_at_a_time(tmp_path: Path) -> None:
    lock = tmp_path / "call.lock"
    with one_call_at_a_time(wait=1, path=lock):
        t0 = time.monotonic()
        with pytest.raises(CallError, match="another call is under way"), one_call_at_a_time(wait=1, path=lock):
            pass
        assert 1 <= time.monotonic() - t0 < 3
    with one_call_at_a_time(wait=0, path=lock):  # released
        pass


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (scripts/setup.sh installs Debian's chromium)")
def test_chromium_opens_the_page_and_is_stopped_by_pid_with_its_profile_removed(server: CallServer) -> None:
    binary = find_chromium()
    assert binary is not None
    b = Browser.start(binary, server.url("c1", "farend"), server.origin, None)
    try:
        deadline = time.monotonic() + 30
        while "farend" not in server.snapshot("c1").opened and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "farend" in server.snapshot("c1").opened, b.log_tail()
        cpu, mem = b.usage()
        assert cpu > 0 and 50e6 < mem < 2e9
    finally:
        b.stop()
    assert b.proc.poll() is not None and not b.profile_dir.exists()
    # The whole group is gone, renderers included: none left but zombies their new parent has yet to reap.
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == b.proc.pid and fields[0] != "Z":
            alive.append(stat.parent.name)
    assert not alive


def test_the_desk_answers_without_a_transport() -> None:
    """What the exporter will mount for the rehearsal page: method, path and body in, an answer out."""
    desk = CallDesk()
    desk.add_call("c3", 1280, 720, 30, 2600)
    assert desk.handle("GET", "/call/c3/page/village")[0] == 200
    assert desk.handle("GET", "/call/c3/stats/village") == (
        405,
        "application/json",
        b'{"error": "only POST is allowed here"}',
    )
    assert desk.handle("POST", "/call/c3/page/village", b"{}")[0] == 405
    assert desk.handle("DELETE", "/call/c3/stats/village", b"{}")[0] == 405
    assert desk.handle("POST", "/call/c3/event/farend", b'{"connection": "connected"}')[0] == 200
    assert desk.snapshot("c3").events["farend"][0]["connection"] == "connected"
    desk.remove_call("c3")
    assert desk.handle("GET", "/call/c3/page/village")[0] == 404
