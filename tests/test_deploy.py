"""deploy/ as installed, and scripts/setup.sh's apt step.

deploy/install.sh lays desanet out in a temporary root (--root) the way it would on a NOC host, and the
tools that host runs check the result there: `promtool check config` on the installed prometheus.yml (with
the rule files it names, relative to itself), `amtool check-config` on the installed alertmanager.yml and
`systemd-analyze verify --root=` on the installed units, whose ExecStart= must then exist in the root. So the
units, the venv path, the configs, the rules and the docs the units point at cannot drift apart again.

The desanet package is built into a wheel from the working tree (offline, with .venv's setuptools) and
installed by install.sh with --no-deps: the layout is real, no stub, and nothing here imports the project.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "deploy" / "install.sh"
SETUP = REPO / "scripts" / "setup.sh"
PREFIX = "/opt/desanet"  # the one path both units run desanet from
UNIT_DIR = "/etc/systemd/system"
# What each unit may hold, and nothing more (docs/operations.md): raw sockets for the probes, port 862 for
# the reflector.
UNIT_CAPABILITIES = {
    "desanet.service": {"CAP_NET_RAW"},
    "desanet-reflector.service": {"CAP_NET_BIND_SERVICE"},
}
UNITS = tuple(UNIT_CAPABILITIES)
# Offline: the wheel with .venv's setuptools, no build isolation; install.sh's pip with neither index nor deps.
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "--no-index"]
PIP_WHEEL += ["--no-build-isolation"]
OFFLINE = ["--pip-arg=--no-deps", "--pip-arg=--no-index"]

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (scripts/setup.sh)")
needs_amtool = pytest.mark.skipif(shutil.which("amtool") is None, reason="needs amtool (scripts/setup.sh)")
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian package systemd; scripts/setup.sh)"
)
needs_dpkg_query = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg-query (a Debian host)")


# --- the install ------------------------------------------------------------------------------------------


def _copy_ignore(directory: str, names: list[str]) -> set[str]:
    """Leave out what the build does not read: VCS data, virtualenvs, caches, earlier builds, run state."""
    top = Path(directory) == REPO
    return {
        n
        for n in names
        if n.startswith(".") or n in ("build", "__pycache__") or n.endswith(".egg-info") or (top and n == "run")
    }


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """desanet's wheel, built from a copy of the working tree without the network (the suite runs in a
    namespace with only loopback): no build isolation, .venv's own setuptools."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=_copy_ignore)
    out = base / "dist"
    proc = subprocess.run(
        [*PIP_WHEEL, "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            "could not build desanet's wheel offline (scripts/setup.sh puts setuptools>=77 in .venv):\n"
            + proc.stdout
            + proc.stderr
        )
    (built,) = out.glob("desanet-*.whl")
    return built


def base_python() -> str:
    """The interpreter .venv was made from: it has venv and ensurepip, so it can make install.sh's venv."""
    for name in ("python3", "python"):
        candidate = Path(sys.base_prefix) / "bin" / name
        if candidate.exists():
            return str(candidate)
    return "python3"


def provide_target_os(root: Path) -> None:
    """The parts of the target Debian system that the units use and desanet does not install: systemd's own
    units (sysinit.target, network-online.target, …) and /bin/kill for ExecReload=. Copied from this host."""
    for unit_dir in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if unit_dir.is_dir():
            shutil.copytree(unit_dir, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
            break
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    if not (root / "bin").exists():
        (root / "bin").symlink_to("usr/bin")  # merged /usr, as on Debian 12
    kill = shutil.which("kill", path="/usr/bin:/bin")
    if kill:
        shutil.copy2(kill, root / "usr/bin/kill")


def run_install(root: Path, wheel: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--python", base_python(), "--package", str(wheel), *OFFLINE],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"deploy/install.sh exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    assert INSTALL.is_file(), "deploy/install.sh, the documented install layout, is missing"
    root = tmp_path_factory.mktemp("root")
    provide_target_os(root)
    run_install(root, wheel)
    return root


def under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """KEY -> values of a unit file, every occurrence in order (SystemCallFilter= may repeat)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- item 15: the layout ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_layout_is_as_install_sh_documents_it(installed: Path) -> None:
    """Every path in install.sh's "Layout" table exists in the installed root."""
    header = INSTALL.read_text().split("\nset -euo pipefail", 1)[0]
    layout = header.split("# Layout", 1)[1].split("\n#\n", 2)[1]
    paths = re.findall(r"^#\s+(/\S+)", layout, flags=re.M)
    assert len(paths) >= 10, layout
    for path in paths:
        found = list(installed.glob(path.lstrip("/"))) if "*" in path else [under(installed, path)]
        assert found and all(p.exists() for p in found), f"install.sh documents {path}; it was not installed"
    secrets = under(installed, "/etc/desanet/secrets.env")
    assert secrets.stat().st_mode & 0o777 == 0o600
    sysctl = under(installed, "/etc/sysctl.d/60-desanet.conf")
    assert sysctl.read_bytes() == (REPO / "deploy/sysctl.d/60-desanet.conf").read_bytes()


@pytest.mark.slow
def test_both_units_run_the_installed_desanet(installed: Path) -> None:
    """One venv at one path, and both units run its console command (they named two different paths)."""
    for unit in UNITS:
        exec_start = unit_settings(under(installed, f"{UNIT_DIR}/{unit}"))["ExecStart"]
        assert len(exec_start) == 1, (unit, exec_start)
        binary = exec_start[0].split()[0]
        assert binary == f"{PREFIX}/bin/desanet", (unit, binary)
    command = under(installed, f"{PREFIX}/bin/desanet")
    assert command.is_file() and os.access(command, os.X_OK)
    # pip's console script, rewritten to run from where the root is copied to, not from the staging root
    assert command.read_text().splitlines()[0] == f"#!{PREFIX}/bin/python"
    staged = str(under(installed, PREFIX))
    for f in under(installed, f"{PREFIX}/bin").iterdir():
        if f.is_file() and not f.is_symlink():
            assert staged not in f.read_text(errors="replace"), f"{f.name} still names the staging root"
    assert list(under(installed, PREFIX).glob("lib/python3*/site-packages/desanet-*.dist-info"))


@pytest.mark.slow
@needs_systemd_analyze
def test_systemd_analyze_verify_installed_units(installed: Path) -> None:
    """`systemd-analyze verify --root=` loads the units from the root and checks that their commands exist
    there: ExecStart= in the venv install.sh made, ExecReload='s /bin/kill from the system. No man: page
    (there is no desanet(1)) and no warning either."""
    proc = subprocess.run(
        ["systemd-analyze", "verify", f"--root={installed}", *UNITS],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


@pytest.mark.slow
def test_units_documentation_is_installed(installed: Path) -> None:
    """Documentation= names installed files (file: URLs under the install root), not a man page that does
    not exist nor a web address."""
    for unit in UNITS:
        docs = " ".join(unit_settings(under(installed, f"{UNIT_DIR}/{unit}")).get("Documentation", [])).split()
        assert docs, f"{unit} has no Documentation="
        for url in docs:
            assert url.startswith("file:/"), f"{unit}: Documentation={url} is not an installed file"
            assert under(installed, url.removeprefix("file:")).is_file(), f"{unit}: {url} is not installed"


@pytest.mark.slow
def test_units_least_privilege(installed: Path) -> None:
    for unit, capabilities in UNIT_CAPABILITIES.items():
        s = unit_settings(under(installed, f"{UNIT_DIR}/{unit}"))
        for key in ("AmbientCapabilities", "CapabilityBoundingSet"):
            assert {c for v in s.get(key, []) for c in v.split()} == capabilities, (unit, key, s.get(key))
        assert s.get("DynamicUser") == ["yes"], unit
        assert s.get("NoNewPrivileges") == ["yes"], unit
        assert "User" not in s and "Group" not in s, unit
        assert s.get("ProtectSystem") == ["strict"], unit


@pytest.mark.slow
@needs_promtool
def test_promtool_check_config_as_installed(installed: Path) -> None:
    """Prometheus' config checks where it is installed, and loads both the rules and the per-village
    overrides docs/alerts.md tells people to edit (the shipped file named a rule path that does not exist
    and left the overrides out)."""
    config = under(installed, "/etc/prometheus/prometheus.yml")
    proc = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    rule_files = {(config.parent / p).resolve() for p in load_yaml(config)["rule_files"]}
    rules_dir = under(installed, "/etc/prometheus/rules")
    assert rule_files == {rules_dir / "desanet.rules.yml", rules_dir / "desanet.overrides.rules.yml"}
    assert (rules_dir / "desanet.rules.yml").read_bytes() == (REPO / "alerts/desanet.rules.yml").read_bytes()
    for f in sorted(rule_files):
        assert f"Checking {f}\n  SUCCESS" in out, out


@pytest.mark.slow
def test_prometheus_job_names(installed: Path) -> None:
    """The jobs prometheus.yml's comment describes and the jobs the rules select (up{job="desanet"} for
    DesanetExporterDown) are jobs the config has."""
    config = under(installed, "/etc/prometheus/prometheus.yml")
    jobs = {sc["job_name"] for sc in load_yaml(config)["scrape_configs"]}
    header = config.read_text().split("\n\n", 1)[0].split("\nglobal:", 1)[0]  # the comment that opens the file
    described = set(re.findall(r"^#\s+-\s+([a-z_]+):", header, flags=re.M))
    assert described and described <= jobs, f"the comment describes jobs {sorted(described - jobs)} it lacks"
    selected = set(
        re.findall(r'\bjob="([^"]+)"', under(installed, "/etc/prometheus/rules/desanet.rules.yml").read_text())
    )
    assert selected and selected <= jobs, f"the rules select jobs {sorted(selected - jobs)} prometheus.yml lacks"


@pytest.mark.slow
@needs_amtool
def test_amtool_check_config_as_installed(installed: Path) -> None:
    """The installed Alertmanager config is alerts/alertmanager.yml (one file, which tests/test_alerts.py
    also checks for routing) and amtool accepts it where Debian's Alertmanager reads it."""
    config = under(installed, "/etc/prometheus/alertmanager.yml")
    assert config.read_bytes() == (REPO / "alerts/alertmanager.yml").read_bytes()
    proc = subprocess.run(
        ["amtool", "check-config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prometheus = load_yaml(under(installed, "/etc/prometheus/prometheus.yml"))
    targets = [
        t for am in prometheus["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]
    ]
    assert targets == ["127.0.0.1:9093"], targets  # Alertmanager's default listen port on the same host


@pytest.mark.slow
def test_grafana_provisioning_as_installed(installed: Path) -> None:
    """The dashboard provider's path holds the generated dashboards; the data source is provisioned."""
    providers = load_yaml(under(installed, "/etc/grafana/provisioning/dashboards/desanet.yaml"))["providers"]
    for provider in providers:
        path = under(installed, provider["options"]["path"])
        assert {p.name for p in path.glob("*.json")} >= {
            "desanet-overview.json",
            "desanet-village.json",
            "desanet-sessions.json",
        }, path
    datasources = load_yaml(under(installed, "/etc/grafana/provisioning/datasources/desanet.yaml"))["datasources"]
    assert [d["uid"] for d in datasources] == ["desanet-prometheus"]


# --- install.sh again: site configuration ------------------------------------------------------------------


@pytest.mark.slow
def test_reinstall_keeps_site_configuration(tmp_path: Path, wheel: Path) -> None:
    """A second run replaces what desanet owns (units, rules) and keeps what the site edited (inventory,
    overrides), writing desanet's version beside it as FILE.desanet-new."""
    root = tmp_path / "root"
    run_install(root, wheel)
    inventory = under(root, "/etc/desanet/inventory.yaml")
    overrides = under(root, "/etc/prometheus/rules/desanet.overrides.rules.yml")
    unit = under(root, f"{UNIT_DIR}/desanet.service")
    rules = under(root, "/etc/prometheus/rules/desanet.rules.yml")
    for f in (inventory, overrides, unit, rules):
        f.write_text(f.read_text() + "# edited on the host\n")
    secrets = under(root, "/etc/desanet/secrets.env")
    secrets.write_text("DESANET_SNMP_COMMUNITY=site-secret\n")

    run_install(root, wheel)
    for f, shipped in ((inventory, REPO / "inventory.yaml"), (overrides, REPO / "alerts/desanet.overrides.rules.yml")):
        assert f.read_text().endswith("# edited on the host\n"), f
        assert Path(f"{f}.desanet-new").read_bytes() == shipped.read_bytes()
    assert unit.read_bytes() == (REPO / "deploy/desanet.service").read_bytes()
    assert rules.read_bytes() == (REPO / "alerts/desanet.rules.yml").read_bytes()
    assert secrets.read_text() == "DESANET_SNMP_COMMUNITY=site-secret\n"
    assert secrets.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
@needs_dpkg_query
def test_debian_default_configs(tmp_path: Path, wheel: Path) -> None:
    """On a host with Debian's prometheus and prometheus-alertmanager, /etc/prometheus already holds their
    default configs: one still as its package shipped it is replaced (kept as .desanet-old); one the site
    edited is kept, with desanet's beside it."""
    root = tmp_path / "root"
    prom = under(root, "/etc/prometheus/prometheus.yml")
    am = under(root, "/etc/prometheus/alertmanager.yml")
    prom.parent.mkdir(parents=True)
    prom.write_text("# Debian's default prometheus.yml\nscrape_configs: []\n")
    am.write_text("# Debian's default alertmanager.yml, edited by the NOC\nroute: {receiver: x}\n")
    status = under(root, "/var/lib/dpkg/status")
    status.parent.mkdir(parents=True)
    md5 = hashlib.md5(prom.read_bytes(), usedforsecurity=False).hexdigest()
    am_shipped_md5 = hashlib.md5(b"# Debian's default alertmanager.yml\n", usedforsecurity=False).hexdigest()
    status.write_text(
        "Package: prometheus\nStatus: install ok installed\nMaintainer: x <x@example.org>\nArchitecture: amd64\n"
        f"Version: 2.42.0\nConffiles:\n /etc/prometheus/prometheus.yml {md5}\nDescription: x\n\n"
        "Package: prometheus-alertmanager\nStatus: install ok installed\nMaintainer: x <x@example.org>\n"
        f"Architecture: amd64\nVersion: 0.25.0\nConffiles:\n /etc/prometheus/alertmanager.yml {am_shipped_md5}\n"
        "Description: x\n\n"
    )
    debian_prom, edited_am = prom.read_text(), am.read_text()

    run_install(root, wheel)
    assert prom.read_bytes() == (REPO / "deploy/prometheus.yml").read_bytes()
    assert Path(f"{prom}.desanet-old").read_text() == debian_prom
    assert am.read_text() == edited_am
    assert Path(f"{am}.desanet-new").read_bytes() == (REPO / "alerts/alertmanager.yml").read_bytes()


# --- item 16: scripts/setup.sh's policy-rc.d -----------------------------------------------------------------

FAKE_APT_GET = """#!/bin/sh
# apt-get as setup.sh calls it; "install" records what the policy-rc.d it finds says about starting services.
case "$1" in
  update) exit 0 ;;
  install)
    if [ -x "$POLICY_RC_D" ]; then "$POLICY_RC_D" snmpd start; echo "policy $?" >>"$APT_LOG"
    else echo "no policy" >>"$APT_LOG"; fi
    echo "install $*" >>"$APT_LOG"
    [ -z "$APT_SLEEP" ] || sleep "$APT_SLEEP"
    exit "${APT_EXIT:-0}" ;;
esac
exit 1
"""


def setup_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apt-get").write_text(FAKE_APT_GET)
    (bin_dir / "apt-get").chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
        "POLICY_RC_D": str(tmp_path / "policy-rc.d"),
        "APT_LOG": str(tmp_path / "apt.log"),
        **extra,
    }


def run_apt_step(env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    """scripts/setup.sh's apt step alone: source the script (which then only defines things), call it."""
    assert "install_debian_packages()" in SETUP.read_text(), (
        "scripts/setup.sh has no install_debian_packages function to run its apt step on its own"
    )
    script = f'set -euo pipefail; source "{SETUP}"; install_debian_packages snmpd iperf3'
    return subprocess.Popen(["bash", "-c", script], env=env, text=True, **kwargs)


def test_setup_policy_rc_d_only_while_apt_runs(tmp_path: Path) -> None:
    env = setup_env(tmp_path)
    assert run_apt_step(env).wait(timeout=60) == 0
    log = Path(env["APT_LOG"]).read_text().splitlines()
    assert log == ["policy 101", "install install -y -qq --no-install-recommends snmpd iperf3"], log
    assert not Path(env["POLICY_RC_D"]).exists(), "setup.sh left policy-rc.d behind: later services never start"


def test_setup_policy_rc_d_removed_when_apt_fails(tmp_path: Path) -> None:
    env = setup_env(tmp_path, APT_EXIT="100")
    assert run_apt_step(env).wait(timeout=60) != 0
    assert Path(env["APT_LOG"]).read_text().startswith("policy 101\n")
    assert not Path(env["POLICY_RC_D"]).exists()


def test_setup_policy_rc_d_removed_when_interrupted(tmp_path: Path) -> None:
    env = setup_env(tmp_path, APT_SLEEP="30")
    proc = run_apt_step(env, start_new_session=True)
    log = Path(env["APT_LOG"])
    deadline = time.monotonic() + 30
    while "install" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and proc.poll() is None, "apt-get install never ran"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # what a stopped CI job or a closed terminal does to the whole group
    assert proc.wait(timeout=30) != 0
    # the outer shell dies at once; the function's subshell runs its traps as soon as apt-get has died
    deadline = time.monotonic() + 10
    while Path(env["POLICY_RC_D"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(env["POLICY_RC_D"]).exists()


def test_setup_keeps_a_policy_rc_d_that_was_there(tmp_path: Path) -> None:
    """The machine's own policy is used as it is and left in place."""
    env = setup_env(tmp_path)
    policy = Path(env["POLICY_RC_D"])
    policy.write_text("#!/bin/sh\n# the admin's\nexit 0\n")
    policy.chmod(0o755)
    assert run_apt_step(env).wait(timeout=60) == 0
    assert Path(env["APT_LOG"]).read_text().startswith("policy 0\n")
    assert policy.read_text() == "#!/bin/sh\n# the admin's\nexit 0\n"


@pytest.mark.parametrize("tool", ["systemd-analyze", "promtool", "amtool"])
def test_setup_installs_the_tools_this_test_needs(tool: str) -> None:
    """The Debian package that provides each tool is in setup.sh's DEBIAN_PACKAGES."""
    path = shutil.which(tool)
    if path is None or shutil.which("dpkg-query") is None:
        pytest.skip(f"needs {tool} and dpkg-query to look up its package")
    owner = subprocess.run(
        ["dpkg-query", "-S", os.path.realpath(path)], capture_output=True, text=True, check=False, timeout=30
    )
    if owner.returncode != 0:
        owner = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True, check=False, timeout=30)
    assert owner.returncode == 0, owner.stderr
    packages = {p.strip().split(":")[0] for p in owner.stdout.split(":", 1)[0].split(",")}
    block = re.search(r"^DEBIAN_PACKAGES=\((.*?)^\)", SETUP.read_text(), flags=re.M | re.S)
    assert block, "scripts/setup.sh has no DEBIAN_PACKAGES=( ... ) list"
    listed = [w for line in block.group(1).splitlines() for w in line.split("#", 1)[0].split()]
    assert packages & set(listed), f"{tool} comes from {sorted(packages)}; setup.sh's DEBIAN_PACKAGES lacks it"
