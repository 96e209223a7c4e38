#!/usr/bin/env bash
# Install everything desanet, its lab and its tests need on a fresh Debian 12 machine (as root), then the
# Python package into ./.venv. Safe to run again: apt and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  iproute2 nftables iptables procps iputils-ping    # the lab: namespaces, veth, tbf, loss rules, NFQUEUE
  snmpd snmp iperf3                                 # what each simulated kantor desa runs; net-snmp CLI for tests
  fping tcpdump tmux curl                           # side-by-side tools, packet captures, the terminal test, HTTP in the NOC
  prometheus prometheus-alertmanager                # promtool, the real Prometheus and Alertmanager in tests
  prometheus-smokeping-prober prometheus-blackbox-exporter   # benchmarks against what users would pick instead
  victoria-metrics                                  # remote_write target in the scale-out test
  chromium fonts-dejavu-core                        # the status page rendered headless in a test
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs Debian packages and the lab needs network namespaces)" >&2
  exit 2
fi

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  # Debian starts packaged services on install; desanet starts its own, so keep theirs off.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${EXTRAS:-test}]"
echo "setup: ready ($(.venv/bin/python --version), desanet installed in .venv)" >&2
