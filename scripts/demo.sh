#!/usr/bin/env bash
# The main job on the built-in default: bring up the simulated Banyuwangi lab (every village of
# inventory.yaml as a network namespace with its own router, snmpd and iperf3), impair a few links the way
# real fibre degrades, and measure every village from the NOC namespace.
# Leaves the lab up for you to explore (desanet lab status / impair / truth / exec); `desanet lab down` ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test ./scripts/setup.sh
. .venv/bin/activate

# The inventory references its SNMP secrets by name; with none exported, `lab up` gives its agents lab-only
# values (and says so) and `desanet lab exec` passes them to what it runs, so nothing needs exporting here.

desanet lab up
desanet lab scenario run demo       # cross traffic (lab/scenarios/demo.yaml): updates, a cloud backup, a camera
desanet lab impair pesanggaran --restore --delay 60 --jitter 50 --up-delay 10     # a congested last mile
desanet lab impair sarongan --restore --loss 4 --up-loss 4                         # a dirty connector
desanet lab impair kalibaru-manis --restore --rate 1 --up-rate 1                   # a throttled link
desanet lab impair --kecamatan Wongsorejo --restore --delay 120 --jitter 10        # a degraded kecamatan uplink
desanet lab impair bajulmati --restore --down                                       # a cut fibre
desanet lab status

exec python -m desanet.lab.demo
