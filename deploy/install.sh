#!/bin/sh
# Install (or upgrade, or remove) edged as a systemd service. POSIX sh; idempotent.
#
#   sudo deploy/install.sh                 # install or upgrade from this source tree
#   sudo deploy/install.sh --with-llm      # ... and pull the local language model
#   sudo deploy/install.sh --uninstall     # remove it; keep /etc/edged and /var/lib/edged
#   sudo deploy/install.sh --uninstall --purge   # ... and those, and the user
#   deploy/install.sh --destdir /tmp/root  # stage into a directory: no root, no systemctl
#
# What it does (each step is skipped when already done, so re-running it is an upgrade):
#   1. the "edged" system user (skipped under --destdir);
#   2. a venv at <prefix>/venv (default /opt/edged/venv) with edged installed from the
#      source tree this script sits in (pip's cache is used; PIP_* variables apply, e.g.
#      PIP_EXTRA_INDEX_URL for NVIDIA's onnxruntime-gpu wheels on a Jetson);
#   3. <config-dir>/edged.toml from `edged config init` when absent (never overwritten),
#      mode 0640 group edged, and <config-dir>/credentials/ (0700) for secrets;
#   4. <state-dir> (default /var/lib/edged), owned by the user, mode 0750;
#   5. with --with-llm: `edged models pull smollm2-135m` (when this edged has that command);
#   6. the unit in <unit-dir> (default /etc/systemd/system), a drop-in loading the secrets
#      found in <config-dir>/credentials/ with LoadCredential=, then daemon-reload and
#      enable (and try-restart on an upgrade, or start with --start). Without systemd, or
#      under --destdir, the systemctl commands are printed instead of run.
set -eu

PROG=$(basename "$0")
HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
SRC=$(CDPATH= cd -- "$HERE/.." && pwd)

PREFIX=/opt/edged
CONFIG_DIR=/etc/edged
STATE_DIR=/var/lib/edged
UNIT_DIR=/etc/systemd/system
SERVICE_USER=edged
PYTHON=${PYTHON:-python3}
DESTDIR=${DESTDIR:-}
WITH_LLM=0
UNINSTALL=0
PURGE=0
START=0
ENABLE=1
LLM_MODEL=smollm2-135m
ORT_PKG=
CREDENTIALS="mqtt_password cloud_api_key request_secret"

usage() {
    cat <<EOF
usage: $PROG [options]

  --prefix DIR        install directory of the venv (default $PREFIX; the venv is DIR/venv)
  --destdir DIR       stage everything under DIR (also: DESTDIR=DIR); no user is created,
                      nothing is chowned and systemctl is not called (printed instead)
  --config-dir DIR    default $CONFIG_DIR
  --state-dir DIR     default $STATE_DIR
  --unit-dir DIR      default $UNIT_DIR
  --user NAME         service user (default $SERVICE_USER)
  --python PATH       interpreter for the venv (default python3; 3.10 or newer)
  --onnxruntime PKG   the onnxruntime distribution: onnxruntime (PyPI, CPU; the default)
                      or onnxruntime-gpu (a Jetson: with PIP_EXTRA_INDEX_URL set to
                      NVIDIA's index for its JetPack); an upgrade keeps the installed one
  --with-llm          also pull the local language model ($LLM_MODEL)
  --start             start (or restart) the service now
  --no-enable         install the unit without enabling it
  --uninstall         remove the service, the venv and the unit; keep config and state
  --purge             with --uninstall: remove the config, the state and the user too
  -h, --help          this text
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) need_arg "$@"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --destdir) need_arg "$@"; DESTDIR=$2; shift 2 ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --config-dir) need_arg "$@"; CONFIG_DIR=$2; shift 2 ;;
        --config-dir=*) CONFIG_DIR=${1#*=}; shift ;;
        --state-dir) need_arg "$@"; STATE_DIR=$2; shift 2 ;;
        --state-dir=*) STATE_DIR=${1#*=}; shift ;;
        --unit-dir) need_arg "$@"; UNIT_DIR=$2; shift 2 ;;
        --unit-dir=*) UNIT_DIR=${1#*=}; shift ;;
        --user) need_arg "$@"; SERVICE_USER=$2; shift 2 ;;
        --user=*) SERVICE_USER=${1#*=}; shift ;;
        --python) need_arg "$@"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --onnxruntime) need_arg "$@"; ORT_PKG=$2; shift 2 ;;
        --onnxruntime=*) ORT_PKG=${1#*=}; shift ;;
        --with-llm) WITH_LLM=1; shift ;;
        --start) START=1; shift ;;
        --no-enable) ENABLE=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ] && die "--purge goes with --uninstall"

for d in "$PREFIX" "$CONFIG_DIR" "$STATE_DIR" "$UNIT_DIR"; do
    case "$d" in
        /*) ;;
        *) die "paths must be absolute: $d" ;;
    esac
done
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(CDPATH= cd -- "$DESTDIR" && pwd)
    [ "$DESTDIR" = / ] && DESTDIR=
fi

# Paths as the running system sees them, and where this script writes them.
VENV=$PREFIX/venv
D_PREFIX=$DESTDIR$PREFIX
D_VENV=$DESTDIR$VENV
D_CONFIG_DIR=$DESTDIR$CONFIG_DIR
D_CONFIG=$D_CONFIG_DIR/edged.toml
D_STATE_DIR=$DESTDIR$STATE_DIR
D_UNIT=$DESTDIR$UNIT_DIR/edged.service
D_DROPIN_DIR=$DESTDIR$UNIT_DIR/edged.service.d
MARKER=.edged-install

staged() { [ -n "$DESTDIR" ]; }

if ! staged && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0 ...), or stage into a directory with --destdir DIR"
fi

# systemctl is only run on a booted systemd system and never under --destdir.
have_systemd() {
    ! staged && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]
}

sysctl_() {
    if have_systemd; then
        say "systemctl $*"
        systemctl "$@"
    else
        say "would run: systemctl $*"
    fi
}

# Refuse to rm -rf anything that is not clearly ours.
safe_rm_dir() {
    case "$1" in
        ""|/|/bin|/boot|/dev|/etc|/home|/lib|/opt|/proc|/root|/run|/sbin|/srv|/sys|/tmp|/usr|/usr/*bin|/var|/var/lib)
            die "refusing to remove $1" ;;
    esac
    case "$1" in
        "$DESTDIR"|"$DESTDIR/") die "refusing to remove $1" ;;
    esac
    if [ -e "$1" ]; then
        rm -rf -- "$1"
        say "removed $1"
    fi
}

own() { # own OWNER:GROUP PATH... (only on the real system)
    if staged; then
        return 0
    fi
    chown "$@"
}

nologin_shell() {
    for s in /usr/sbin/nologin /sbin/nologin /bin/false; do
        [ -x "$s" ] && { echo "$s"; return; }
    done
    echo /bin/false
}

is_jetson() { [ -f /etc/nv_tegra_release ]; }

# --------------------------------------------------------------------------- uninstall
if [ "$UNINSTALL" = 1 ]; then
    if [ -f "$D_UNIT" ]; then
        sysctl_ disable --now edged.service || warn "could not stop/disable edged.service"
    fi
    [ -f "$D_UNIT" ] && rm -f -- "$D_UNIT" && say "removed $D_UNIT"
    [ -d "$D_DROPIN_DIR" ] && safe_rm_dir "$D_DROPIN_DIR"
    if [ -f "$D_PREFIX/$MARKER" ]; then
        safe_rm_dir "$D_PREFIX"
    elif [ -x "$D_VENV/bin/edged" ]; then
        safe_rm_dir "$D_VENV"
    fi
    sysctl_ daemon-reload
    if [ "$PURGE" = 1 ]; then
        safe_rm_dir "$D_CONFIG_DIR"
        safe_rm_dir "$D_STATE_DIR"
        if staged; then
            say "would remove the system user $SERVICE_USER (skipped under --destdir)"
        elif id "$SERVICE_USER" >/dev/null 2>&1; then
            userdel "$SERVICE_USER" && say "removed user $SERVICE_USER" || warn "could not remove user $SERVICE_USER"
        fi
    else
        [ -e "$D_CONFIG_DIR" ] && say "kept $D_CONFIG_DIR (remove it with --uninstall --purge)"
        [ -e "$D_STATE_DIR" ] && say "kept $D_STATE_DIR (remove it with --uninstall --purge)"
    fi
    say "edged uninstalled"
    exit 0
fi

# --------------------------------------------------------------------------- install
[ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/edged" ] || die "no edged source tree at $SRC (run the script from its checkout)"
[ -f "$HERE/systemd/edged.service" ] || die "missing $HERE/systemd/edged.service"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install python3 (3.10 or newer) and python3-venv"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$PYTHON is $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'); edged needs 3.10 or newer"

# 1. the service user
if staged; then
    say "would create the system user $SERVICE_USER (skipped under --destdir)"
elif id "$SERVICE_USER" >/dev/null 2>&1; then
    say "user $SERVICE_USER exists"
else
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell "$(nologin_shell)" --comment "edged anomaly detection" "$SERVICE_USER"
    say "created system user $SERVICE_USER"
fi
if ! staged && is_jetson && getent group video >/dev/null 2>&1; then
    usermod -a -G video "$SERVICE_USER"  # /dev/nvhost-*, /dev/nvmap for the CUDA provider
fi

# 2. the venv, and edged in it
mkdir -p "$D_PREFIX"
: >"$D_PREFIX/$MARKER"
if [ -x "$D_VENV/bin/python" ] && "$D_VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "venv $D_VENV exists (upgrading edged in it)"
else
    [ -e "$D_VENV" ] && safe_rm_dir "$D_VENV"  # broken (e.g. the system python changed)
    "$PYTHON" -m venv "$D_VENV" ||
        die "cannot create a venv with $PYTHON (on Debian / Raspberry Pi OS: apt install python3-venv)"
    say "created venv $D_VENV"
fi
PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_DISABLE_PIP_VERSION_CHECK
WHEELS=$(mktemp -d "${TMPDIR:-/tmp}/edged-wheel.XXXXXX")
trap 'rm -rf "$WHEELS"' EXIT
# Build edged once; its dependencies come from the index (or pip's cache).
"$D_VENV/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" "$SRC" ||
    die "pip could not build edged from $SRC (see the messages above)"
WHEEL=$(ls "$WHEELS"/edged-*.whl)
# onnxruntime: PyPI's CPU package, or another build of it (onnxruntime-gpu from NVIDIA's
# index on a Jetson). Both install the same "onnxruntime" module, so only one may be
# present: edged's requirement is rewritten to the chosen package, and an upgrade keeps
# whichever the venv already has.
if [ -z "$ORT_PKG" ]; then
    if "$D_VENV/bin/python" -m pip show --quiet onnxruntime-gpu >/dev/null 2>&1; then
        ORT_PKG=onnxruntime-gpu
    else
        ORT_PKG=onnxruntime
    fi
fi
if [ "$ORT_PKG" = onnxruntime ] && ! staged && is_jetson; then
    warn "a Jetson with PyPI's CPU-only onnxruntime: for CUDA/TensorRT re-run with --onnxruntime onnxruntime-gpu" \
        "and PIP_EXTRA_INDEX_URL set to NVIDIA's index for this JetPack (docs/DEPLOY.md)"
fi
if [ "$ORT_PKG" != onnxruntime ] && "$D_VENV/bin/python" -m pip show --quiet onnxruntime >/dev/null 2>&1; then
    "$D_VENV/bin/python" -m pip uninstall --quiet --yes onnxruntime
    ORT_REINSTALL=1  # the CPU package's removal took the shared module files with it
fi
"$D_VENV/bin/python" - "$WHEEL" "$ORT_PKG" >"$WHEELS/requirements.txt" <<'PY'
import re, sys, zipfile
wheel, ort = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    text = z.read(meta).decode("utf-8")
for line in text.splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = line.split(":", 1)[1].strip()
    if re.search(r"\bextra\s*==", req):
        continue
    name = re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]
    if re.sub(r"[-_.]+", "-", name).lower() == "onnxruntime":
        req = ort + req[len(name):]
    print(req)
PY
# Without --upgrade: an upgrade keeps working dependency versions (pip changes only what
# no longer satisfies edged's requirements).
"$D_VENV/bin/python" -m pip install --quiet -r "$WHEELS/requirements.txt" ||
    die "pip could not install edged's dependencies (see the messages above)"
if [ "${ORT_REINSTALL:-0}" = 1 ]; then
    "$D_VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$ORT_PKG" ||
        die "pip could not reinstall $ORT_PKG"
fi
# edged itself without dependencies (its onnxruntime requirement is met by $ORT_PKG); a
# forced reinstall, since pip keeps an installed edged of the same version.
"$D_VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$WHEEL" ||
    die "pip could not install edged from $WHEEL"
VERSION=$("$D_VENV/bin/edged" --version) || die "$D_VENV/bin/edged --version failed"
say "installed $VERSION into $D_VENV"
if [ -f "$SRC/docs/DEPLOY.md" ]; then  # the unit's Documentation=
    mkdir -p "$D_PREFIX/share/doc"
    cp "$SRC/docs/DEPLOY.md" "$D_PREFIX/share/doc/DEPLOY.md"
    chmod 0644 "$D_PREFIX/share/doc/DEPLOY.md"
fi

# 3. the config (never overwritten) and the credentials directory
mkdir -p "$D_CONFIG_DIR"
chmod 0755 "$D_CONFIG_DIR"
if [ -f "$D_CONFIG" ]; then
    say "kept $D_CONFIG"
    NEW_CONFIG=0
else
    "$D_VENV/bin/edged" config init "$D_CONFIG" >/dev/null
    NEW_CONFIG=1
    if [ "$STATE_DIR" != /var/lib/edged ]; then
        "$D_VENV/bin/edged" config set node.state_dir "$STATE_DIR" --config "$D_CONFIG" >/dev/null
    fi
    say "created $D_CONFIG (edit it: [mqtt] host, [sensors] topics)"
fi
chmod 0640 "$D_CONFIG"
own "root:$SERVICE_USER" "$D_CONFIG"
mkdir -p "$D_CONFIG_DIR/credentials"
chmod 0700 "$D_CONFIG_DIR/credentials"
if [ -f "$D_CONFIG_DIR/edged.env" ]; then
    chmod 0600 "$D_CONFIG_DIR/edged.env"  # read by systemd as root, never by the service user
    own root:root "$D_CONFIG_DIR/edged.env"
fi

# 4. the state directory
mkdir -p "$D_STATE_DIR"
chmod 0750 "$D_STATE_DIR"
own "$SERVICE_USER:$SERVICE_USER" "$D_STATE_DIR"

# 5. the language model
if [ "$WITH_LLM" = 1 ]; then
    if "$D_VENV/bin/edged" models pull --help >/dev/null 2>&1; then
        say "pulling $LLM_MODEL (this downloads and builds it; it may take a while)"
        # The config names the running system's paths: point it at the staged ones.
        EDGED_NODE__STATE_DIR=$D_STATE_DIR EDGED_MODELS__DIR=$D_STATE_DIR/models \
            "$D_VENV/bin/edged" models pull "$LLM_MODEL" --config "$D_CONFIG" ||
            die "edged models pull $LLM_MODEL failed (re-run with --with-llm once the network is up)"
        own -R "$SERVICE_USER:$SERVICE_USER" "$D_STATE_DIR"
    else
        warn "this edged has no 'models pull' command yet: the language model was not pulled"
    fi
fi

# 6. the unit, the credentials drop-in, systemctl
mkdir -p "$DESTDIR$UNIT_DIR"
TMP_UNIT=$D_UNIT.tmp.$$
trap 'rm -rf "$WHEELS" "$TMP_UNIT" "$D_DROPIN_DIR/10-credentials.conf.tmp.$$"' EXIT
sed -e "s#/opt/edged/venv#$VENV#g" \
    -e "s#/opt/edged/share#$PREFIX/share#g" \
    -e "s#/etc/edged#$CONFIG_DIR#g" \
    -e "s#/var/lib/edged#$STATE_DIR#g" \
    -e "s#^User=edged\$#User=$SERVICE_USER#" \
    -e "s#^Group=edged\$#Group=$SERVICE_USER#" \
    "$HERE/systemd/edged.service" >"$TMP_UNIT"
if [ "$STATE_DIR" != /var/lib/edged ]; then
    # StateDirectory= only names directories under /var/lib; a custom one is made above.
    sed -i -e '/^StateDirectory/d' "$TMP_UNIT" 2>/dev/null ||
        { grep -v '^StateDirectory' "$TMP_UNIT" >"$TMP_UNIT.2" && mv "$TMP_UNIT.2" "$TMP_UNIT"; }
fi
chmod 0644 "$TMP_UNIT"
if [ -f "$D_UNIT" ] && cmp -s "$TMP_UNIT" "$D_UNIT"; then
    rm -f "$TMP_UNIT"
    say "unit $D_UNIT is up to date"
else
    mv -f "$TMP_UNIT" "$D_UNIT"
    say "installed $D_UNIT"
fi

DROPIN=$D_DROPIN_DIR/10-credentials.conf
lines=""
for name in $CREDENTIALS; do
    if [ -f "$D_CONFIG_DIR/credentials/$name" ]; then
        chmod 0600 "$D_CONFIG_DIR/credentials/$name"
        lines="${lines}LoadCredential=$name:$CONFIG_DIR/credentials/$name
"
    fi
done
if ! staged && is_jetson; then
    lines="${lines}# Jetson: the GPU device nodes for the CUDA / TensorRT providers.
PrivateDevices=no
SupplementaryGroups=video
"
fi
if [ -n "$lines" ]; then
    mkdir -p "$D_DROPIN_DIR"
    {
        echo "# Written by deploy/install.sh from $CONFIG_DIR/credentials/: re-run it after adding a file."
        echo "[Service]"
        printf '%s' "$lines"
    } >"$DROPIN.tmp.$$"
    chmod 0644 "$DROPIN.tmp.$$"
    mv -f "$DROPIN.tmp.$$" "$DROPIN"
    say "credentials drop-in $DROPIN: $(grep -c '^LoadCredential' "$DROPIN" || true) secret(s)"
elif [ -f "$DROPIN" ]; then
    rm -f "$DROPIN"
    rmdir "$D_DROPIN_DIR" 2>/dev/null || true
fi

WAS_ACTIVE=0
if have_systemd && systemctl is-active --quiet edged.service; then
    WAS_ACTIVE=1
fi
sysctl_ daemon-reload
if [ "$ENABLE" = 1 ]; then
    sysctl_ enable edged.service
fi
if [ "$START" = 1 ]; then
    sysctl_ restart edged.service
elif [ "$WAS_ACTIVE" = 1 ]; then
    sysctl_ try-restart edged.service
    say "restarted the running service on the new version"
fi

say "done: $VERSION"
if [ "$NEW_CONFIG" = 1 ] && [ "$START" = 0 ]; then
    say "next: edit $CONFIG_DIR/edged.toml, then: systemctl start edged && journalctl -u edged -f"
fi
