"""Headless Chromium as a call's endpoint: its command line, start, resource use and stop by PID.

Driven by the page alone (it fetches its orders and posts its stats over HTTP), so no DevTools connection is
needed: nothing to keep open, no debugging port listening in a village's namespace, and the same page a
technician opens in a kantor desa's own browser.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Debian's /usr/bin/chromium is a shell wrapper that adds flags and prints shell errors: call the binary.
_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium-headless-shell", "chromium", "google-chrome")


def find_chromium() -> str | None:
    """The Chromium binary to run: $DESANET_CHROMIUM, else Debian's real binary, else one on PATH."""
    env = os.environ.get("DESANET_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for c in _CANDIDATES:
        path = c if c.startswith("/") else shutil.which(c)
        if path and os.access(path, os.X_OK) and not _is_script(path):
            return path
    return None


def _is_script(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


def argv(
    binary: str, url: str, profile_dir: Path, video_file: Path | None, origin: str, extra: Sequence[str] = ()
) -> list[str]:
    """Chromium's flags for an unattended call. Each one is there for a reason met while measuring; `extra`
    are the caller's (the rehearsal's far end pins serve's TLS key with one, exporter/rehearse.py)."""
    args = [
        binary,
        "--headless",
        "--no-sandbox",  # desanet runs the lab as root; Chromium's sandbox refuses root
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--mute-audio",
        f"--user-data-dir={profile_dir}",
        # Fake camera and microphone, no permission prompt.
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        # getUserMedia wants a secure origin; desanet's call server is plain HTTP inside the network.
        f"--unsafely-treat-insecure-origin-as-secure={origin}",
        # mDNS names would hide the host candidates, the only ones a village-NOC call has.
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        # A headless page counts as hidden: keep its timers and rendering at full speed.
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ]
    if video_file is not None:
        args.append(f"--use-file-for-fake-video-capture={video_file}")
    args.extend(extra)
    args.append(url)
    return args


@dataclass
class Browser:
    """A running Chromium: its PID (the process group leader) and its throwaway profile directory."""

    proc: subprocess.Popen[bytes]
    profile_dir: Path
    log: Path

    @classmethod
    def start(
        cls,
        binary: str,
        url: str,
        origin: str,
        video_file: Path | None,
        prefix: list[str] | None = None,
        extra: Sequence[str] = (),
    ) -> Browser:
        """Start Chromium on `url`, behind `prefix` (e.g. `ip netns exec NS`, which execs in place)."""
        profile_dir = Path(tempfile.mkdtemp(prefix="desanet-call-chromium-"))
        log = profile_dir / "chromium.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*(prefix or []), *argv(binary, url, profile_dir / "profile", video_file, origin, extra)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, led by this PID: stopped as one
            )
        return cls(proc=proc, profile_dir=profile_dir, log=log)

    def usage(self) -> tuple[float, int]:
        """CPU seconds and memory of the browser and all its processes (read from /proc).

        Memory is the proportional set size: Chromium's processes share most of their pages, so a sum of RSS
        counts the same library several times (1.2 GB against ~0.35 GB PSS measured here)."""
        pids = _descendants(self.proc.pid)
        cpu, rss = 0.0, 0
        tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            rss += _pss(pid) or int(fields[21]) * page
        return cpu, rss

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the browser, then SIGKILL its process group (by its PID) if it lingers; remove its profile."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        # Renderers and the zygote can outlive a killed browser for a moment; the group is ours alone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(grace)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                shutil.rmtree(self.profile_dir)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.2)  # a dying renderer may still write into the profile
        shutil.rmtree(self.profile_dir, ignore_errors=True)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _pss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out
