"""Shared fixtures. The `lab` fixture brings up the simulated district once per test session, under its
own namespace prefix, so it never touches a lab someone is using by hand, and takes it down at the end
even when tests fail."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from desanet.district import Inventory, Village, load_inventory

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# The secrets the shipped inventory references; the lab's agents accept exactly these.
LAB_SECRETS = {
    "DESANET_SNMP_COMMUNITY": "desanet-test-community",
    "DESANET_SNMP_AUTH_KEY": "desanet-test-auth",
    "DESANET_SNMP_PRIV_KEY": "desanet-test-priv",
}


def _have_lab_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for cmd in ("ip", "tc", "nft", "iptables-restore", "snmpd", "iperf3"):
        if shutil.which(cmd) is None:
            return f"needs {cmd} (run scripts/setup.sh)"
    return None


class Lab:
    """A running lab plus the few verbs tests need. Everything goes through the real CLI or real tools."""

    def __init__(self, prefix: str, inventory: Path, env: dict[str, str]):
        self.prefix = prefix
        self.inventory = inventory
        self.env = env
        state = json.loads((Path("/run/desanet-lab") / prefix / "state.json").read_text())
        self.noc_ns: str = state["plan"]["noc_ns"]
        self.villages: dict[str, dict[str, Any]] = {v["slug"]: v for v in state["plan"]["villages"]}

    def desanet(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "desanet.cli", *args],
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"desanet {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
        return proc

    def noc(self, *argv: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command inside the NOC namespace (what `desanet lab exec` does)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.noc_ns, *argv],
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=check,
        )

    def impair(self, *args: str) -> None:
        self.desanet("lab", "impair", *args)

    def restore(self, target: str) -> None:
        if target.startswith("--kecamatan"):
            self.desanet("lab", "impair", *target.split("=", 1), "--restore")
        else:
            self.desanet("lab", "impair", target, "--restore")

    def truth(self, window: float) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.desanet("lab", "truth", "--json", "--window", str(window)).stdout)
        return out

    def address(self, slug: str) -> str:
        return str(self.villages[slug]["router"])

    def village_ns(self, slug: str) -> str:
        return str(self.villages[slug]["ns"])

    def run_in_noc(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on a fresh event loop in a thread that has entered the NOC namespace, so every
        socket the probe opens lives there."""
        from desanet.lab.netns import run_in_netns

        return run_in_netns(self.noc_ns, lambda: asyncio.run(coro))


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    why = _have_lab_prerequisites()
    if why:
        pytest.skip(f"lab: {why}")
    prefix = f"t{os.getpid() % 100000}"
    env = {**os.environ, **LAB_SECRETS, "DESANET_LAB_PREFIX": prefix}
    os.environ.update(LAB_SECRETS)
    os.environ["DESANET_LAB_PREFIX"] = prefix
    inventory = ROOT / "inventory.yaml"
    up = subprocess.run(
        [sys.executable, "-m", "desanet.cli", "lab", "up", "--inventory", str(inventory)],
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
    )
    try:
        if up.returncode != 0:
            raise AssertionError(f"lab up failed: {up.stderr}")
        yield Lab(prefix, inventory, env)
    finally:
        subprocess.run(
            [sys.executable, "-m", "desanet.cli", "lab", "down"],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )


@pytest.fixture(scope="module")
def inv() -> Inventory:
    """The shipped inventory (a module may define its own `inv` instead)."""
    return load_inventory(ROOT / "inventory.yaml")


@pytest.fixture(scope="module")
def village(inv: Inventory) -> Village:
    """Kabat, a village of the shipped inventory with every probe's endpoint."""
    return inv.village("kabat")


@pytest.fixture
def impaired(lab: Lab) -> Iterator[list[str]]:
    """Villages (or --kecamatan=NAME) a test impairs, restored afterwards whatever happens."""
    touched: list[str] = []
    yield touched
    for target in touched:
        lab.restore(target)


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Stop a process a test started (by its PID, never by name): TERM, then KILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def make_server() -> Iterator[Callable[..., Any]]:
    """`iperf3 -s` on 127.0.0.1 (tests/test_throughput.py's Iperf3Server), as many as a test asks for, stopped
    by PID at the end."""
    from tests.test_throughput import Iperf3Server

    servers: list[Iperf3Server] = []

    def make(**kw: bool) -> Iperf3Server:
        servers.append(Iperf3Server(**kw))
        return servers[-1]

    yield make
    for srv in servers:
        srv.stop()
