#!/usr/bin/env bash
# The whole test suite, as CI runs it: install, lint, type-check, then pytest.
# pytest runs inside a fresh network namespace that has only loopback, so no test can send a packet beyond
# this machine: the lab's namespaces are reached through `ip netns exec`, never through the host's routes.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test ./scripts/setup.sh
. .venv/bin/activate
# One command per line: `set -e` ignores a failure anywhere in an `a && b` list but its last command, so a
# lint error inside such a list let the run go on to green.
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== import-linter (the layers in docs/layout.md)"
lint-imports
echo "== pytest"
exec unshare --net -- sh -c 'ip link set lo up && exec python -m pytest "$@"' pytest "$@"
