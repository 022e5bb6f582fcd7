#!/usr/bin/env bash
# Sets up everything the tests need (scripts/setup.sh: apt packages, .venv) and runs
# the whole suite. Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
# Tests start their own services (Mosquitto, PostgreSQL, gpsd via gpsfake, SoftHSM2
# tokens) on free loopback ports and in temporary folders.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests  # with what only the tests need (Chromium, PostgreSQL ...)
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
