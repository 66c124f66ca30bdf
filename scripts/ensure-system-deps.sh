#!/usr/bin/env bash
# Makes sure the system packages the test bench needs are present: a real mosquitto broker and its
# clients, libusb (librealsense loads it even to play back recordings), systemd's tools
# (systemd-analyze, systemd-sysusers: the deployment tests), openssl (test certificates), a C
# compiler with libc headers (the tests build the protocol's C reference implementation,
# firmware_bridge/c/), Node.js with npm (the real AsyncAPI parser checks docs/mqtt/asyncapi.yaml),
# headless Chromium with its driver (the reference display's browser tests), Orthanc (the PACS and
# worklist the capture tests send to) and dicom3tools (dciodvfy checks every DICOM file the device
# writes). Installs them with apt-get when running as root; otherwise prints the exact command and
# fails. Then installs the pinned npm dev tooling (scripts/node/package-lock.json) with `npm ci` when
# it is missing or stale.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
packages=(mosquitto mosquitto-clients libusb-1.0-0 systemd openssl gcc libc6-dev nodejs npm chromium chromium-driver orthanc dicom3tools)
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || missing+=(libusb-1.0-0)
{ command -v systemd-analyze && command -v systemd-sysusers; } >/dev/null 2>&1 || missing+=(systemd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
[ -f /usr/include/stdio.h ] || missing+=(libc6-dev)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt run to finish rather than fail on its lock.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]}" >&2
    echo "run:  sudo apt-get update && sudo apt-get install -y ${packages[*]}" >&2
    exit 1
  fi
fi

# npm dev tooling, exactly as locked; install scripts off (none is needed, and one only phones home).
stamp="$here/node/node_modules/.package-lock.json"
if [ ! -f "$stamp" ] || [ "$here/node/package-lock.json" -nt "$stamp" ]; then
  echo "installing the npm dev tooling (scripts/node/package-lock.json)"
  npm ci --prefix "$here/node" --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
fi
