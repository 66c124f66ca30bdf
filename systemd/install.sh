#!/usr/bin/env bash
# Installs sonoguide as a system service: user, directories, virtualenv, systemd unit, udev rules,
# broker configuration and a default config. Idempotent: running it again gives the same result.
# An existing config is never overwritten: the new default goes next to it as <name>.new.
#
#   sudo systemd/install.sh                       # install on this machine
#   systemd/install.sh --root /tmp/img --link     # into a directory tree (images, tests), offline
#
# Options:
#   --root DIR     install into DIR instead of /; runs no systemctl/udevadm, needs no root
#   --link         offline venv: --system-site-packages, the project linked from this source tree
#                  (development benches and tests); default: pip-install this tree into the venv
#   --no-venv      leave the virtualenv alone
#   --python PY    interpreter for the venv (default: python3; JetPack 6 ships 3.10)
#   --no-broker    do not install the mosquitto configuration
#   --onnxruntime auto|cpu|gpu|none
#                  which ONNX Runtime build pip installs (default auto: x86_64 cpu, or gpu where an
#                  NVIDIA GPU is present or the GPU build already is; aarch64 none: NVIDIA's wheel)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT=""
VENV_MODE="pip"
PYTHON="python3"
BROKER=1
ORT_EXTRA="auto"

usage() { sed -n '2,19s/^# \{0,1\}//p' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || { echo "install.sh: --root needs a directory" >&2; exit 2; }
            ROOT="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --link) VENV_MODE="link"; shift ;;
    --no-venv) VENV_MODE="none"; shift ;;
    --python) [ $# -ge 2 ] || { echo "install.sh: --python needs an interpreter" >&2; exit 2; }
              PYTHON="$2"; shift 2 ;;
    --no-broker) BROKER=0; shift ;;
    --onnxruntime) [ $# -ge 2 ] || { echo "install.sh: --onnxruntime needs auto, cpu, gpu or none" >&2; exit 2; }
                   ORT_EXTRA="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case "$ORT_EXTRA" in
  auto|cpu|gpu|none) ;;
  *) echo "install.sh: --onnxruntime must be auto, cpu, gpu or none, not '$ORT_EXTRA'" >&2; exit 2 ;;
esac

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: installing on this machine needs root: sudo $0 $*" >&2
  echo "            (or --root DIR to install into a directory tree)" >&2
  exit 1
fi

say() { echo "install.sh: $*"; }

# Files we own are replaced; temp file + rename so a reader never sees half a file.
put() {  # put MODE SOURCE DEST
  local mode="$1" src="$2" dest="$ROOT$3"
  mkdir -p "$(dirname "$dest")"
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    chmod "$mode" "$dest"
    return
  fi
  install -m "$mode" "$src" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
  say "installed $3"
}

# Files an administrator edits are never overwritten: a changed default goes to DEST.new.
put_config() {  # put_config MODE SOURCE DEST
  local mode="$1" src="$2" dest="$ROOT$3"
  mkdir -p "$(dirname "$dest")"
  if [ ! -e "$dest" ]; then
    install -m "$mode" "$src" "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"
    say "installed $3"
  elif cmp -s "$src" "$dest"; then
    rm -f "$dest.new"
  else
    install -m "$mode" "$src" "$dest.new"
    say "kept your $3; the new default is in $3.new (compare and merge by hand)"
  fi
}

dir() {  # dir MODE PATH
  mkdir -p "$ROOT$2"
  chmod "$1" "$ROOT$2"
}

# --- user and group (systemd-sysusers is idempotent and supports --root) -------------------------
put 0644 "$SRC/systemd/sonoguide.sysusers" /etc/sysusers.d/sonoguide.conf
if command -v systemd-sysusers >/dev/null 2>&1; then
  # With --root the file argument is still a host path.
  systemd-sysusers --root="${ROOT:-/}" "$ROOT/etc/sysusers.d/sonoguide.conf" 2>&1 | sed 's/^/install.sh: /' >&2
else
  echo "install.sh: systemd-sysusers not found (Debian/Ubuntu: apt-get install systemd)" >&2
  exit 1
fi

# --- directories ----------------------------------------------------------------------------------
dir 0755 /opt/sonoguide
dir 0755 /etc/sonoguide
dir 0755 /etc/sonoguide/model-keys  # trusted vendor keys (*.pub.json, revoked-keys.txt); root writes them
dir 0700 /etc/credstore            # secrets for LoadCredential=; root only
# State (model store, TensorRT engine cache): systemd gives StateDirectory= to the service user.
dir 0750 /var/lib/sonoguide
dir 0750 /var/lib/sonoguide/models
dir 0750 /var/lib/sonoguide/trt-cache

# --- virtualenv -----------------------------------------------------------------------------------
VENV="$ROOT/opt/sonoguide/venv"
case "$VENV_MODE" in
  pip)
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
    # --system-site-packages: JetPack's NVIDIA onnxruntime-gpu wheel and librealsense live there.
    # The ONNX Runtime build per platform (docs/deploy.md): x86_64 [cpu], or [gpu] with an NVIDIA GPU;
    # aarch64 none from PyPI (NVIDIA's wheel, which nothing here may shadow). Never two in one venv.
    ort_extra="$ORT_EXTRA"
    [ "$ort_extra" != auto ] || ort_extra="$(PYTHONPATH="$SRC" "$VENV/bin/python" -m service.tools.onnxruntime_extra)"
    case "$ort_extra" in
      cpu) ort_other=onnxruntime-gpu ;;
      gpu) ort_other=onnxruntime ;;
      *) ort_extra=""; ort_other="" ;;
    esac
    if [ -n "$ort_other" ] && "$VENV/bin/python" -m pip show --quiet "$ort_other" >/dev/null 2>&1; then
      "$VENV/bin/python" -m pip uninstall --quiet --yes "$ort_other"
      say "removed $ort_other from the venv (it would shadow the $ort_extra build)"
    fi
    "$VENV/bin/python" -m pip install --quiet --upgrade "$SRC${ort_extra:+[$ort_extra]}"
    say "installed the sonoguide package${ort_extra:+ with ONNX Runtime [$ort_extra]} into /opt/sonoguide/venv"
    if [ -z "$ort_extra" ] && ! "$VENV/bin/python" -c 'import onnxruntime' 2>/dev/null; then
      echo "install.sh: no ONNX Runtime in the venv or the system: on a Jetson install NVIDIA's" \
           "onnxruntime-gpu wheel (docs/jetson.md), elsewhere rerun with --onnxruntime cpu" >&2
    fi
    ;;
  link)
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$SRC" > "$site/sonoguide-src.pth.tmp.$$" && mv -f "$site/sonoguide-src.pth.tmp.$$" "$site/sonoguide-src.pth"
    script="$(mktemp)"
    printf '#!%s\nimport sys\nfrom service.cli import main\nsys.exit(main())\n' "$VENV/bin/python" > "$script"
    # The shebang must name the path the service will see, not the image directory.
    sed -i "1s|^#!$ROOT|#!|" "$script"
    put 0755 "$script" /opt/sonoguide/venv/bin/sonoguide
    rm -f "$script"
    ;;
  none) ;;
esac

# --- systemd unit, udev rules, docs, default config -----------------------------------------------
put 0644 "$SRC/systemd/sonoguide.service" /etc/systemd/system/sonoguide.service
put 0644 "$SRC/systemd/99-sonoguide.rules" /etc/udev/rules.d/99-sonoguide.rules
for doc in deploy.md jetson.md; do
  [ -f "$SRC/docs/$doc" ] && put 0644 "$SRC/docs/$doc" "/opt/sonoguide/docs/$doc"
done
put_config 0644 "$SRC/systemd/config.toml" /etc/sonoguide/config.toml

# --- local broker (mosquitto) ---------------------------------------------------------------------
if [ "$BROKER" -eq 1 ]; then
  put_config 0644 "$SRC/systemd/mosquitto/sonoguide-local.conf" /etc/mosquitto/conf.d/sonoguide.conf
  put_config 0644 "$SRC/systemd/mosquitto/sonoguide.acl" /etc/mosquitto/sonoguide/acl
  # The bridge needs site details (address, certificates): installed as an example, not enabled.
  put 0644 "$SRC/systemd/mosquitto/sonoguide-bridge.conf" /etc/mosquitto/sonoguide/bridge.conf.example
  [ -e "$ROOT/etc/mosquitto/sonoguide/passwd" ] || { : > "$ROOT/etc/mosquitto/sonoguide/passwd"; }
  chmod 0600 "$ROOT/etc/mosquitto/sonoguide/passwd"
fi

# --- activate (only on a live system) -------------------------------------------------------------
if [ -z "$ROOT" ]; then
  if [ "$BROKER" -eq 1 ] && getent passwd mosquitto >/dev/null; then
    chown mosquitto:mosquitto /etc/mosquitto/sonoguide/passwd
  fi
  systemctl daemon-reload
  if command -v udevadm >/dev/null 2>&1; then
    udevadm control --reload-rules && udevadm trigger --subsystem-match=tty --subsystem-match=usb || true
  fi
  systemctl enable sonoguide.service >/dev/null
  say "enabled sonoguide.service; next: edit /etc/sonoguide/config.toml, run"
  say "  /opt/sonoguide/venv/bin/sonoguide doctor --config /etc/sonoguide/config.toml"
  say "  systemctl restart sonoguide && journalctl -u sonoguide -f"
else
  say "installed into $ROOT"
fi
