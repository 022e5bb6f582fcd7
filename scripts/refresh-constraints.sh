#!/usr/bin/env bash
# Refreshes constraints.txt on purpose: upgrades .venv to the newest releases that
# pyproject.toml's ranges allow, runs the tests with them, and only then writes the new
# pins (review `git diff constraints.txt` before committing it). `--no-upgrade` re-pins
# what .venv holds now, e.g. after adding a dependency to pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--no-upgrade" ]; then
  echo "refresh-constraints: upgrading .venv within pyproject.toml's ranges"
  .venv/bin/pip install --upgrade -e '.[dev]'
  ./scripts/test.sh -q
fi
{
  cat <<'HEADER'
# Every Python package of a working CityWatch venv, pinned: scripts/setup.sh and CI
# install from it (pip install -c constraints.txt), so that a new release upstream (a
# major version of OpenCV, say) arrives only when this file is refreshed, on purpose:
# scripts/refresh-constraints.sh upgrades within pyproject.toml's ranges, runs the
# tests, and writes it. Generated; do not edit by hand.
HEADER
  .venv/bin/pip freeze --exclude-editable --disable-pip-version-check
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "refresh-constraints: constraints.txt written ($(grep -vc '^#' constraints.txt) pins)"
