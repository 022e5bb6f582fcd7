#!/usr/bin/env bash
# Sets up CityWatch (scripts/setup.sh) and runs the demo district: a broker, the
# trusted server, the ENC with its dashboard, and several street-pole devices on fake
# hardware; one device sees a person down and the alert reaches the dashboard.
# Extra arguments go to `citywatch demo` (e.g. --once for a headless smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/citywatch demo "$@"
