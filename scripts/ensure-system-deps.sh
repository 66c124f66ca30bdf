#!/usr/bin/env bash
# Makes sure the system packages the test bench needs are present: a real mosquitto broker and its
# clients, libusb (librealsense loads it even to play back recordings), systemd's tools
# (systemd-analyze, systemd-sysusers: the deployment tests), openssl (test certificates), and a C
# compiler with libc headers (the tests build the protocol's C reference implementation,
# firmware_bridge/c/), Orthanc (the PACS and worklist the capture tests send to) and dicom3tools
# (dciodvfy checks every DICOM file the device writes). Installs them with apt-get when running as root; otherwise prints the exact
# command and fails.
set -euo pipefail

packages=(mosquitto mosquitto-clients libusb-1.0-0 systemd openssl gcc libc6-dev orthanc dicom3tools)
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || missing+=(libusb-1.0-0)
{ command -v systemd-analyze && command -v systemd-sysusers; } >/dev/null 2>&1 || missing+=(systemd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
[ -f /usr/include/stdio.h ] || missing+=(libc6-dev)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi

echo "missing system packages: ${missing[*]}" >&2
echo "run:  sudo apt-get update && sudo apt-get install -y ${packages[*]}" >&2
exit 1
