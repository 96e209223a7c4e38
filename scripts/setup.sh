#!/usr/bin/env bash
# Install everything desanet, its lab and its tests need on a fresh Debian 12 machine (as root), then the
# Python package into ./.venv. Safe to run again: apt and pip skip what is already there.
# tests/test_deploy.py sources this file (which then only defines what is below) to exercise
# install_debian_packages with a fake apt-get.

DEBIAN_PACKAGES=(
  iproute2 nftables iptables procps iputils-ping    # the lab: namespaces, veth, tbf, loss rules, NFQUEUE
  snmpd snmp iperf3                                 # what each simulated kantor desa runs; net-snmp CLI for tests
  fping tcpdump tmux curl                           # side-by-side tools, packet captures, the terminal test, HTTP in the NOC
  prometheus prometheus-alertmanager                # promtool, the real Prometheus and Alertmanager in tests
  prometheus-smokeping-prober prometheus-blackbox-exporter   # benchmarks against what users would pick instead
  victoria-metrics                                  # remote_write target in the scale-out test
  chromium fonts-dejavu-core                        # the status page rendered headless in a test
  systemd                                           # systemd-analyze verify on the installed units (tests/test_deploy.py)
)

# Debian's invoke-rc.d asks this file whether a package may start its service; "exit 101" says no.
POLICY_RC_D=${POLICY_RC_D:-/usr/sbin/policy-rc.d}

# install_debian_packages PKG...: apt-get install them without letting Debian start the services they ship
# (desanet's lab and tests start their own). The policy-rc.d that forbids it is there only while apt-get
# runs, whatever way this ends: left behind, it would silently stop every service any later package
# installs on the machine. One that was there before is the machine's own policy: used, never removed.
# A subshell, so that its EXIT trap fires when the function returns, fails or is interrupted.
install_debian_packages() (
  set -euo pipefail
  created=
  trap '[ -z "$created" ] || rm -f "$POLICY_RC_D"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  apt-get update -qq
  if [ ! -e "$POLICY_RC_D" ] && [ ! -L "$POLICY_RC_D" ]; then
    created=1
    printf '#!/bin/sh\n# written by desanet scripts/setup.sh for the duration of one apt-get install\nexit 101\n' >"$POLICY_RC_D"
    chmod 0755 "$POLICY_RC_D"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
)

main() {
  set -euo pipefail
  cd "$(dirname "${BASH_SOURCE[0]}")/.."

  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (it installs Debian packages and the lab needs network namespaces)" >&2
    exit 2
  fi

  local p missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    install_debian_packages "${missing[@]}"
  fi

  local py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  # setuptools that reads pyproject's SPDX `license`: tests/test_deploy.py builds desanet's wheel with it,
  # offline (no build isolation inside the test's network namespace).
  .venv/bin/python -m pip install -q --disable-pip-version-check "setuptools>=77"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${EXTRAS:-test}]"
  if [ "${EXTRAS:-test}" = test ] && [ ! -x .venv-snmpsim/bin/snmpsim-command-responder ]; then
    # snmpsim serves the recorded devices in tests/snmprec/. Its own venv: it needs pysmi (undeclared), which
    # pulls in requests, Jinja2 and lark, none of which desanet itself should depend on.
    "$py" -m venv .venv-snmpsim
    .venv-snmpsim/bin/python -m pip install -q --disable-pip-version-check "snmpsim==1.2.2" "pysmi>=2,<3"
  fi
  echo "setup: ready ($(.venv/bin/python --version), desanet installed in .venv)" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
