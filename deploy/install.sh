#!/usr/bin/env bash
# Install desanet on a Debian 12 host in the one layout its units, configs and docs assume.
#
#   deploy/install.sh [--root DIR] [--python PY] [--package SPEC] [--pip-arg ARG]...
#
# Run it as root from a checkout (or an unpacked source archive). It installs files and reloads systemd; it
# starts and enables nothing (see "Then" below). Safe to run again for an upgrade: what desanet owns is
# replaced, what the site edits is kept (see "Site configuration").
#
# Layout (every path below is under --root, default /; tests/test_deploy.py installs into a temporary root
# and runs promtool, amtool and systemd-analyze on the result, so the files cannot drift apart again):
#
#   /opt/desanet/                           a virtualenv holding the desanet package;
#   /opt/desanet/bin/desanet                  the console command both units run
#   /etc/systemd/system/desanet.service     `desanet serve`, CAP_NET_RAW only (the NOC's probe host)
#   /etc/systemd/system/desanet-reflector.service   `desanet reflector`, CAP_NET_BIND_SERVICE only (a village)
#   /etc/sysctl.d/60-desanet.conf           net.core.rmem_max for the ICMP engine's receive buffer
#   /etc/desanet/inventory.yaml             the district                                  [site]
#   /etc/desanet/secrets.env                SNMP secrets the inventory names, mode 0600   [site]
#   /etc/prometheus/prometheus.yml          scrape jobs, rule files, Alertmanager         [site]
#   /etc/prometheus/rules/desanet.rules.yml             alerting and recording rules
#   /etc/prometheus/rules/desanet.overrides.rules.yml   per-village thresholds        [site]
#   /etc/prometheus/alertmanager.yml        routing and inhibition (alerts/alertmanager.yml)   [site]
#   /etc/grafana/provisioning/datasources/desanet.yaml  the Prometheus data source    [site]
#   /etc/grafana/provisioning/dashboards/desanet.yaml   the dashboard provider
#   /var/lib/grafana/dashboards/desanet/*.json          the generated dashboards
#   /usr/share/doc/desanet/                 README.md and docs/ (the units' Documentation=)
#
# /etc/prometheus/prometheus.yml and alertmanager.yml are where Debian's prometheus and
# prometheus-alertmanager packages read their configuration; prometheus.yml names its rule files relative to
# itself (rules/...), so it means the same in a staged root.
#
# Site configuration ([site] above): installed when absent, or when the file there is still exactly what its
# Debian package shipped (Debian's default prometheus.yml and alertmanager.yml; the old one is kept as
# FILE.desanet-old). A file the site has edited is left alone and desanet's version is written beside it as
# FILE.desanet-new: compare and merge by hand. Everything else is replaced on every run: change the units
# with drop-ins (`systemctl edit desanet`), thresholds in desanet.overrides.rules.yml.
#
# Users: none is created. Both units run with DynamicUser=yes, an unprivileged UID allocated at each start
# (state in /var/lib/private/desanet, reached as /var/lib/desanet); the manager reads secrets.env as root
# before dropping privileges, so it stays root-only. A site whose policy wants a fixed account (for file
# ACLs, say) creates it with `useradd --system --no-create-home --shell /usr/sbin/nologin desanet` and sets
# `DynamicUser=no` and `User=desanet` in a drop-in.
#
# Options:
#   --root DIR      install under DIR instead of / (also: DESTDIR=DIR). The virtualenv is created in
#                   DIR/opt/desanet and its scripts are rewritten to run from /opt/desanet, so DIR can be
#                   copied onto a host of the same distribution (the venv links to PY by absolute path).
#                   Nothing on the running system is touched: no systemctl, no sysctl.
#   --python PY     the interpreter for the virtualenv (default: python3; Debian needs python3-venv)
#   --package SPEC  what pip installs: a source directory, a wheel, or a requirement such as desanet==0.1.0
#                   (default: the checkout this script is in)
#   --pip-arg ARG   pass ARG to pip, repeatable: e.g. --pip-arg=--no-index --pip-arg=--find-links=/srv/wheels
#                   on a host without access to PyPI
#
# Then (on the NOC's probe host):
#   edit /etc/desanet/inventory.yaml and /etc/desanet/secrets.env; /opt/desanet/bin/desanet inventory check \
#     /etc/desanet/inventory.yaml
#   list the probe hosts in /etc/prometheus/prometheus.yml and the receivers in alertmanager.yml
#   systemctl enable --now desanet; systemctl reload-or-restart prometheus prometheus-alertmanager
# and on a village host: systemctl enable --now desanet-reflector. docs/operations.md has the whole story.
set -euo pipefail
umask 022                    # directories it creates (/etc/prometheus/rules, …) must be readable by the services

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/desanet          # the units' ExecStart= paths name it: change both together, never one
DOCDIR=/usr/share/doc/desanet

ROOT=${DESTDIR:-/}
PYTHON=${PYTHON:-python3}
PACKAGE=$SRC
PIP_ARGS=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() {
  echo "install: $*" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --python=*) PYTHON=${1#*=}; shift ;;
    --package) PACKAGE=${2:?--package needs a spec}; shift 2 ;;
    --package=*) PACKAGE=${1#*=}; shift ;;
    --pip-arg) PIP_ARGS+=("${2:?--pip-arg needs an argument}"); shift 2 ;;
    --pip-arg=*) PIP_ARGS+=("${1#*=}"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

if [ "$ROOT" != / ]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
fi
R=${ROOT%/}                  # prefix for every installed path: "" for /, "/tmp/x" for a staged root
if [ -z "$R" ] && [ "$(id -u)" -ne 0 ]; then
  die "installing into / needs root (or stage into a directory with --root DIR)"
fi

# The generated dashboards: under dashboards/ in the checkout, or inside the desanet import package.
DASHBOARD_JSON=
for d in "$SRC/desanet/dashboards/json" "$SRC/dashboards/json"; do
  if compgen -G "$d/*.json" >/dev/null; then DASHBOARD_JSON=$d; break; fi
done
[ -n "$DASHBOARD_JSON" ] || die "no generated dashboards (*.json) under $SRC/dashboards/json"

say() { echo "install: $*" >&2; }

# put MODE SRC DEST: a file desanet owns, replaced on every run.
put() {
  install -D -m "$1" "$2" "$R$3"
}

# The md5sum the Debian package that owns DEST shipped it with, if one did (dpkg's conffile record).
packaged_md5() {
  local admindir=$R/var/lib/dpkg
  [ -f "$admindir/status" ] && command -v dpkg-query >/dev/null || return 0
  dpkg-query --admindir="$admindir" -W -f='${Conffiles}\n' 2>/dev/null | awk -v f="$1" '$1 == f { print $2; exit }'
}

# put_site MODE SRC DEST: site configuration; see "Site configuration" above.
put_site() {
  local mode=$1 src=$2 dest=$3 shipped
  if [ ! -e "$R$dest" ]; then
    install -D -m "$mode" "$src" "$R$dest"
  elif cmp -s "$src" "$R$dest"; then
    chmod "$mode" "$R$dest"
  else
    shipped=$(packaged_md5 "$dest")
    if [ -n "$shipped" ] && [ "$(md5sum <"$R$dest" | cut -d' ' -f1)" = "$shipped" ]; then
      mv -f "$R$dest" "$R$dest.desanet-old"
      install -D -m "$mode" "$src" "$R$dest"
      say "$dest: replaced its Debian package's default (kept as $dest.desanet-old)"
    else
      install -D -m "$mode" "$src" "$R$dest.desanet-new"
      say "$dest: kept yours; desanet's is $dest.desanet-new, merge by hand"
    fi
  fi
}

# --- the package: one virtualenv at $PREFIX, the path both units run -------------------------------------
say "virtualenv $R$PREFIX ($PYTHON), package $PACKAGE"
"$PYTHON" -m venv "$R$PREFIX" || die "$PYTHON -m venv failed (on Debian: apt-get install python3-venv)"
pip=("$R$PREFIX/bin/python" -m pip --disable-pip-version-check -q)
# --force-reinstall --no-deps: a rebuilt checkout of the same version replaces the installed one; the second
# call then brings in (only) the dependencies that are missing.
"${pip[@]}" install "${PIP_ARGS[@]}" --force-reinstall --no-deps "$PACKAGE"
"${pip[@]}" install "${PIP_ARGS[@]}" "$PACKAGE"
[ -x "$R$PREFIX/bin/desanet" ] || die "$PACKAGE installed no desanet command in $R$PREFIX/bin"
if [ -n "$R" ]; then
  # Staged: scripts and the venv's own records name $R$PREFIX; make them name $PREFIX, where it will run.
  staged=$(grep -rlIF -- "$R$PREFIX" "$R$PREFIX/bin" "$R$PREFIX/pyvenv.cfg" || true)
  while IFS= read -r f; do
    if [ -n "$f" ]; then sed -i "s|$R$PREFIX|$PREFIX|g" "$f"; fi
  done <<<"$staged"
fi

# --- systemd units, kernel setting -------------------------------------------------------------------------
put 0644 "$SRC/deploy/desanet.service" /etc/systemd/system/desanet.service
put 0644 "$SRC/deploy/desanet-reflector.service" /etc/systemd/system/desanet-reflector.service
put 0644 "$SRC/deploy/sysctl.d/60-desanet.conf" /etc/sysctl.d/60-desanet.conf

# --- desanet's own configuration ---------------------------------------------------------------------------
install -d -m 0755 "$R/etc/desanet"
put_site 0644 "$SRC/inventory.yaml" /etc/desanet/inventory.yaml
if [ ! -e "$R/etc/desanet/secrets.env" ]; then
  (
    umask 077
    printf '%s\n' \
      '# SNMP secrets that /etc/desanet/inventory.yaml references as {env: NAME}; read by systemd as root.' \
      '#DESANET_SNMP_COMMUNITY=' '#DESANET_SNMP_AUTH_KEY=' '#DESANET_SNMP_PRIV_KEY=' >"$R/etc/desanet/secrets.env"
  )
fi
chmod 0600 "$R/etc/desanet/secrets.env"

# --- Prometheus and Alertmanager ---------------------------------------------------------------------------
put_site 0644 "$SRC/deploy/prometheus.yml" /etc/prometheus/prometheus.yml
put 0644 "$SRC/alerts/desanet.rules.yml" /etc/prometheus/rules/desanet.rules.yml
put_site 0644 "$SRC/alerts/desanet.overrides.rules.yml" /etc/prometheus/rules/desanet.overrides.rules.yml
put_site 0644 "$SRC/alerts/alertmanager.yml" /etc/prometheus/alertmanager.yml

# --- Grafana -----------------------------------------------------------------------------------------------
put_site 0644 "$SRC/deploy/grafana/provisioning/datasources/desanet.yaml" \
  /etc/grafana/provisioning/datasources/desanet.yaml
put 0644 "$SRC/deploy/grafana/provisioning/dashboards/desanet.yaml" /etc/grafana/provisioning/dashboards/desanet.yaml
install -d -m 0755 "$R/var/lib/grafana/dashboards/desanet"
for f in "$DASHBOARD_JSON"/*.json; do
  put 0644 "$f" "/var/lib/grafana/dashboards/desanet/${f##*/}"
done

# --- documentation: what the units' Documentation= lines point at ------------------------------------------
put 0644 "$SRC/README.md" "$DOCDIR/README.md"
for f in "$SRC"/docs/*.md "$SRC"/docs/*.png; do
  if [ -e "$f" ]; then put 0644 "$f" "$DOCDIR/${f##*/}"; fi
done

# --- the running system ------------------------------------------------------------------------------------
if [ -z "$R" ]; then
  sysctl -q -p /etc/sysctl.d/60-desanet.conf || say "warning: sysctl -p /etc/sysctl.d/60-desanet.conf failed"
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
fi
version=$("$R$PREFIX/bin/python" -c 'import importlib.metadata as m; print(m.version("desanet"))' 2>/dev/null || echo '?')
say "done: desanet $version in $R$PREFIX"
say "next: edit /etc/desanet/inventory.yaml and secrets.env, then systemctl enable --now desanet (docs/operations.md)"
