#!/usr/bin/env bash
# Install the Plexus learner agent on a Raspberry Pi OS, Ubuntu/Debian or Jetson Linux device.
#
# What it does: checks the platform and Python, creates a virtual environment, installs a torch
# build that exists for this platform and pulls no CUDA libraries onto a Pi, then
# `plexus-edge[agent]` from a checkout, a wheel or sdist built from one, or a git URL (never a
# bare name from an index: "plexus" on PyPI is someone else's project), writes the agent's config
# file and a join-token file readable only by the service user, and installs, enables and starts
# the systemd unit `plexus-agent.service` (Restart=on-failure, unprivileged user).
#
# With `--prefix DIR --no-systemd` everything goes under DIR and nothing else on the system is
# touched (no user, no /etc, no systemd): that is how CI runs it. docs/deploy.md walks through a
# real installation.
set -euo pipefail

DIST="plexus-edge"                      # our distribution's name ([project] name in pyproject.toml)
# torch per platform. x86-64: the project's pinned torch (see Makefile), CPU build from PyTorch's
# index (PyPI's x86-64 wheel pulls several GB of CUDA). aarch64: from PyPI, the newest release
# whose aarch64 wheel pulls no CUDA: 2.11 and later require cuda-toolkit 13, nvidia-cudnn-cu13,
# nvidia-nccl-cu13 ... on every Linux, 2.10 only on x86-64 (tests/deploy/test_install_agent.py
# resolves this choice for aarch64 and checks that no nvidia-*/cuda-* package comes with it).
TORCH_X86_64="torch==2.13.0"
TORCH_AARCH64="torch==2.10.0"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
MIN_PYTHON="3.10"

usage() {
    cat <<'EOF'
Usage: install-agent.sh --orchestrator URL --join-token-file FILE [options]

Required (unless --no-config):
  --orchestrator URL        orchestrator base URL, e.g. https://orchestrator.lan:8443
  --join-token-file FILE    file holding the join token (copied; the original is left alone)
                            (or set PLEXUS_JOIN_TOKEN in the environment)

Agent:
  --name NAME               learner name (default: this host's name)
  --relay                   serve through the orchestrator's relay (device behind NAT)
  --port PORT               port of the agent's RPC worker when not relayed (default 8701)
  --ca-cert FILE            CA certificate to trust for an https orchestrator with a private CA

Where and how:
  --prefix DIR              install root (default /opt/plexus-agent)
  --no-systemd              touch nothing outside --prefix: no user, no /etc, no unit installed
                            (the unit is still rendered to DIR/plexus-agent.service)
  --no-config               install the software only; write no config or token
  --user USER               service user, created when missing (default plexus)
  --python PY               Python interpreter, 3.10 or newer (default python3)
  --source SRC              where plexus-edge comes from: a checkout directory (default: the
                            checkout this script is in, if it is in one), a wheel or sdist built
                            from one (python3 -m pip wheel --no-deps -w dist CHECKOUT), or a git
                            URL (git+https://HOST/REPO.git[@REF]). A bare name is refused: it
                            would come from an index, and "plexus" on PyPI is another project
  --torch MODE              auto (default): pick a build for this platform (x86-64: torch 2.13.0
                            CPU; aarch64: torch 2.10.0, which pulls no CUDA); skip: let pip
                            resolve torch itself; or a requirement such as "torch==2.3.1"
  --torch-index URL         package index for torch ("pip" = pip's configured indexes)
  --torch-wheel FILE|URL    install this torch wheel (Jetson: NVIDIA's wheel for your JetPack)
  --torch-from SITE_DIR     reuse the torch already installed in SITE_DIR (a site-packages
                            directory) instead of installing one
  --system-site-packages    let the venv see system-wide packages (e.g. a torch from apt/NVIDIA)
  --pip-arg ARG             extra argument for every pip install (repeatable)
  --dry-run                 print the platform, the torch choice and the source, then stop
  --arch ARCH               with --dry-run: show the choice for ARCH (uname -m, e.g. aarch64)
  -h, --help                this help
EOF
}

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

ORCHESTRATOR="" TOKEN_FILE="" NAME="" RELAY=0 PORT=8701 CA_CERT=""
PREFIX="/opt/plexus-agent" SYSTEMD=1 WRITE_CONFIG=1 SERVICE_USER="plexus" PYTHON="python3"
SOURCE="" TORCH_MODE="auto" TORCH_INDEX="" TORCH_WHEEL="" TORCH_FROM=""
SYSTEM_SITE=0 DRY_RUN=0 ARCH_OVERRIDE=""
PIP_ARGS=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --orchestrator) ORCHESTRATOR="${2:?--orchestrator needs a URL}"; shift 2 ;;
        --join-token-file) TOKEN_FILE="${2:?--join-token-file needs a file}"; shift 2 ;;
        --name) NAME="${2:?--name needs a value}"; shift 2 ;;
        --relay) RELAY=1; shift ;;
        --port) PORT="${2:?--port needs a number}"; shift 2 ;;
        --ca-cert) CA_CERT="${2:?--ca-cert needs a file}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --no-systemd) SYSTEMD=0; shift ;;
        --no-config) WRITE_CONFIG=0; shift ;;
        --user) SERVICE_USER="${2:?--user needs a name}"; shift 2 ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --source) SOURCE="${2:?--source needs a checkout directory, a wheel or sdist, or a git URL}"; shift 2 ;;
        --torch) TORCH_MODE="${2:?--torch needs auto, skip or a requirement}"; shift 2 ;;
        --torch-index) TORCH_INDEX="${2:?--torch-index needs a URL}"; shift 2 ;;
        --torch-wheel) TORCH_WHEEL="${2:?--torch-wheel needs a file or URL}"; shift 2 ;;
        --torch-from) TORCH_FROM="${2:?--torch-from needs a site-packages directory}"; shift 2 ;;
        --system-site-packages) SYSTEM_SITE=1; shift ;;
        --pip-arg) PIP_ARGS+=("${2:?--pip-arg needs an argument}"); shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --arch) ARCH_OVERRIDE="${2:?--arch needs a machine name such as aarch64}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

# ---------------------------------------------------------------------------- checks
if [[ $SYSTEMD -eq 1 && $DRY_RUN -eq 0 && $(id -u) -ne 0 ]]; then
    die "installing the systemd service needs root: run with sudo, or add --no-systemd --prefix DIR"
fi
if [[ $WRITE_CONFIG -eq 1 && $DRY_RUN -eq 0 ]]; then
    [[ -n "$ORCHESTRATOR" ]] || die "--orchestrator URL is required (or --no-config)"
    [[ "$ORCHESTRATOR" =~ ^https?:// ]] || die "--orchestrator must start with http:// or https://, got $ORCHESTRATOR"
    if [[ -z "$TOKEN_FILE" && -z "${PLEXUS_JOIN_TOKEN:-}" ]]; then
        die "give the join token with --join-token-file FILE (or PLEXUS_JOIN_TOKEN=...); the orchestrator prints it at start"
    fi
    [[ -z "$TOKEN_FILE" || -r "$TOKEN_FILE" ]] || die "cannot read join token file $TOKEN_FILE"
    [[ -z "$CA_CERT" || -r "$CA_CERT" ]] || die "cannot read CA certificate $CA_CERT"
    [[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, got $PORT"
fi
[[ -z "$TORCH_FROM" || -d "$TORCH_FROM/torch" ]] || die "--torch-from $TORCH_FROM has no torch/ package in it"
[[ -z "$ARCH_OVERRIDE" || $DRY_RUN -eq 1 ]] || die "--arch only goes with --dry-run (the install itself is for this machine)"

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python $MIN_PYTHON+ (sudo apt install python3 python3-venv) or pass --python"
PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! "$PYTHON" -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)"; then
    die "Python $PY_VERSION is too old; plexus needs $MIN_PYTHON+. Ubuntu 20.04 / JetPack 5: sudo apt install python3.10 python3.10-venv (deadsnakes PPA) and pass --python python3.10"
fi

# ---------------------------------------------------------------------------- source
# Everything pip gets is "plexus-edge[agent] @ URL": pip then checks that what it finds there is
# our distribution, and no index is ever asked for the name.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -z "$SOURCE" ]]; then
    if [[ -f "$HERE/../pyproject.toml" ]] && grep -q "^name = \"$DIST\"" "$HERE/../pyproject.toml"; then
        SOURCE=$(cd "$HERE/.." && pwd)
    else
        die "--source is required: this script is not inside a plexus checkout. Give a checkout directory, a wheel or sdist built from one, or a git URL (docs/deploy.md, step 4)"
    fi
fi
if [[ -d "$SOURCE" || -f "$SOURCE" ]]; then
    if [[ -d "$SOURCE" ]]; then
        [[ -f "$SOURCE/pyproject.toml" ]] || die "--source $SOURCE: no pyproject.toml there; give the root of a plexus checkout"
    else
        case "$(basename "$SOURCE")" in
            plexus_edge-*.whl|plexus_edge-*.tar.gz|plexus-edge-*.tar.gz) ;;
            *) die "--source $SOURCE: expected a plexus_edge-*.whl or plexus_edge-*.tar.gz built from a checkout (python3 -m pip wheel --no-deps -w dist CHECKOUT)" ;;
        esac
    fi
    # The absolute file: URL of the path (spaces and the like %-escaped).
    SOURCE_URL=$("$PYTHON" -c 'import pathlib, sys; print(pathlib.Path(sys.argv[1]).resolve().as_uri())' "$SOURCE")
else
    case "$SOURCE" in
        git+file:///*)   # pip wants a host in a git URL: git+file://localhost/PATH
            SOURCE_URL="git+file://localhost/${SOURCE#git+file:///}" ;;
        git+*://*|http://*.whl|https://*.whl|http://*.tar.gz|https://*.tar.gz)
            SOURCE_URL="$SOURCE" ;;
        *://*)
            die "--source $SOURCE: a URL must be a git URL (git+https://HOST/REPO.git[@REF]) or point at a .whl or .tar.gz" ;;
        */*|*.whl|*.tar.gz)
            die "--source $SOURCE: no such file or directory" ;;
        *)
            die "--source $SOURCE is a bare name, and install-agent.sh never installs plexus from an index by name (\"plexus\" on PyPI is an unrelated project). Give a checkout directory (./plexus), a wheel or sdist built from one (python3 -m pip wheel --no-deps -w dist CHECKOUT), or a git URL (git+https://HOST/REPO.git)" ;;
    esac
fi
SPEC="$DIST[agent] @ $SOURCE_URL"

# ---------------------------------------------------------------------------- platform
ARCH=${ARCH_OVERRIDE:-$(uname -m)}
MODEL=""
[[ -z "$ARCH_OVERRIDE" && -r /proc/device-tree/model ]] && MODEL=$(tr -d '\0' </proc/device-tree/model)
OS_NAME="unknown"
[[ -r /etc/os-release ]] && OS_NAME=$(. /etc/os-release && echo "${PRETTY_NAME:-$ID}")
GLIBC=$("$PYTHON" -c 'import platform; print(platform.libc_ver()[1] or "unknown")')
JETSON_L4T=""
if [[ -n "$ARCH_OVERRIDE" ]]; then
    :   # a dry run for another machine: no Jetson detection from this one's files
elif [[ -r /etc/nv_tegra_release ]]; then
    # "# R35 (release), REVISION: 4.1" -> 35.4.1 (R32 = JetPack 4, R35 = JetPack 5, R36 = JetPack 6)
    JETSON_L4T=$(sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\).*/\1.\2/p' /etc/nv_tegra_release)
    [[ -n "$JETSON_L4T" ]] || JETSON_L4T="unknown"
elif [[ "$MODEL" == *Jetson* ]]; then
    JETSON_L4T="unknown"
fi
PLATFORM="$ARCH"
[[ -n "$JETSON_L4T" ]] && PLATFORM="jetson"
[[ "$MODEL" == *"Raspberry Pi"* && "$ARCH" == "aarch64" ]] && PLATFORM="raspberrypi-64"
[[ "$ARCH" == armv7l || "$ARCH" == armv6l ]] && PLATFORM="arm32"

say "platform: $ARCH ${MODEL:+($MODEL) }on $OS_NAME, glibc $GLIBC, Python $PY_VERSION${JETSON_L4T:+, Jetson L4T $JETSON_L4T}"

# ---------------------------------------------------------------------------- torch choice
# TORCH_PLAN is one of: reuse | skip | wheel:<file/url> | index:<url>:<requirement> | pip:<requirement>
TORCH_PLAN=""
if [[ -n "$TORCH_FROM" ]]; then
    TORCH_PLAN="reuse"
elif [[ -n "$TORCH_WHEEL" ]]; then
    TORCH_PLAN="wheel:$TORCH_WHEEL"
elif [[ "$TORCH_MODE" == "skip" ]]; then
    TORCH_PLAN="skip"
else
    REQ="$TORCH_MODE"
    case "$PLATFORM" in
        x86_64)
            # PyPI's default x86_64 torch bundles CUDA (several GB); the CPU build lives on
            # PyTorch's own index.
            [[ "$TORCH_MODE" == "auto" ]] && REQ="$TORCH_X86_64"
            TORCH_PLAN="index:${TORCH_INDEX:-$TORCH_CPU_INDEX}:$REQ" ;;
        aarch64|raspberrypi-64)
            # PyPI's aarch64 torch 2.10 is a CPU build with no CUDA dependency (manylinux,
            # glibc 2.28+: bookworm has 2.36); 2.11+ would pull GBs of CUDA 13 onto a Pi.
            [[ "$TORCH_MODE" == "auto" ]] && REQ="$TORCH_AARCH64"
            TORCH_PLAN="index:${TORCH_INDEX:-pip}:$REQ" ;;
        jetson)
            # NVIDIA builds CUDA wheels per JetPack release; PyPI has none for Jetson's GPU.
            case "$JETSON_L4T" in
                32.*)
                    die "this is JetPack 4 (L4T $JETSON_L4T, e.g. a Jetson Nano): NVIDIA's newest torch for it is 1.10 on Python 3.6, older than plexus needs (torch 2.1+, Python 3.10+), and its glibc $GLIBC is too old for PyPI's torch 2.x wheels. Run the agent in a container with a newer userland instead (docs/deploy.md, 'Jetson Nano'), or pass --torch-wheel with a torch 2.x wheel you built for this board." ;;
                *)
                    warn "no --torch-wheel given: installing PyPI's CPU-only aarch64 torch. For the GPU, download NVIDIA's torch wheel for JetPack (L4T $JETSON_L4T) and Python $PY_VERSION (https://docs.nvidia.com/deeplearning/frameworks/install-pytorch-jetson-platform/; docs/deploy.md 'Torch builds') and run again with --torch-wheel FILE."
                    [[ "$TORCH_MODE" == "auto" ]] && REQ="$TORCH_AARCH64"
                    TORCH_PLAN="index:${TORCH_INDEX:-pip}:$REQ" ;;
            esac ;;
        arm32)
            die "32-bit ARM ($ARCH): no torch build exists for it on PyPI or from PyTorch. Install the 64-bit Raspberry Pi OS (any Pi 3, 4, 5 or Zero 2 W runs it) and run this again; a Pi 1, 2 or Zero cannot run the agent. A torch wheel you built yourself can be given with --torch-wheel." ;;
        *)
            die "no known torch build for $ARCH; install torch 2.1+ yourself and run again with --torch-from SITE_DIR or --torch-wheel FILE" ;;
    esac
fi
say "torch: $TORCH_PLAN"
say "plexus: $SPEC"
if [[ $DRY_RUN -eq 1 ]]; then
    exit 0
fi

# ---------------------------------------------------------------------------- layout
if [[ $SYSTEMD -eq 1 ]]; then
    ETC_DIR="/etc/plexus-agent"
    DATA_DIR="/var/lib/plexus-agent"
    UNIT_PATH="/etc/systemd/system/plexus-agent.service"
else
    ETC_DIR="$PREFIX/etc"
    DATA_DIR="$PREFIX/var"
    UNIT_PATH="$PREFIX/plexus-agent.service"
    SERVICE_USER=$(id -un)
fi
VENV="$PREFIX/venv"
CONFIG="$ETC_DIR/agent.conf"
TOKEN_DEST="$ETC_DIR/join-token"

if [[ $SYSTEMD -eq 1 ]] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    say "creating system user $SERVICE_USER"
    useradd --system --home-dir "$DATA_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
fi

# ---------------------------------------------------------------------------- venv + packages
mkdir -p "$PREFIX"
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating virtual environment $VENV"
    VENV_ARGS=()
    [[ $SYSTEM_SITE -eq 1 ]] && VENV_ARGS+=(--system-site-packages)
    "$PYTHON" -m venv "${VENV_ARGS[@]}" "$VENV" \
        || die "could not create a venv; on Debian/Ubuntu/Raspberry Pi OS: sudo apt install python3-venv"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if [[ "$TORCH_PLAN" == reuse ]]; then
    # Appended to sys.path after the venv's own site-packages, so only what the venv lacks
    # (torch and its dependencies) is taken from there.
    SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$(cd "$TORCH_FROM" && pwd)" >"$SITE/zz-plexus-reuse-torch.pth"
    say "reusing torch from $TORCH_FROM"
elif "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    say "torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') already importable; keeping it"
else
    case "$TORCH_PLAN" in
        skip) ;;
        wheel:*)
            say "installing torch wheel ${TORCH_PLAN#wheel:}"
            "${PIP[@]}" install "${PIP_ARGS[@]}" "${TORCH_PLAN#wheel:}" ;;
        index:*)
            rest=${TORCH_PLAN#index:}
            req=${rest##*:}
            index=${rest%:*}
            say "installing $req${index:+ from $index}"
            if [[ "$index" == pip ]]; then
                "${PIP[@]}" install "${PIP_ARGS[@]}" "$req" || die "pip could not install $req for $ARCH/Python $PY_VERSION; see docs/deploy.md 'torch builds'"
            else
                "${PIP[@]}" install "${PIP_ARGS[@]}" --index-url "$index" "$req" || die "pip could not install $req from $index; retry with --torch-index pip or --torch-wheel FILE"
            fi ;;
    esac
fi

say "installing $SPEC"
"${PIP[@]}" install "${PIP_ARGS[@]}" "$SPEC" || die "pip could not install $SPEC; see the output above"
"$VENV/bin/python" -c 'import learner_agent, deploy.agent_service' \
    || die "plexus installed but the agent does not import; see the pip output above"
"$VENV/bin/plexus" agent --help >/dev/null || die "the plexus CLI does not start; see the output above"

# ---------------------------------------------------------------------------- config + token
if [[ $WRITE_CONFIG -eq 1 ]]; then
    mkdir -p "$ETC_DIR" "$DATA_DIR"
    umask 077
    if [[ -n "$TOKEN_FILE" ]]; then
        tr -d '\r\n' <"$TOKEN_FILE" >"$TOKEN_DEST"
    else
        printf '%s' "$PLEXUS_JOIN_TOKEN" >"$TOKEN_DEST"
    fi
    chmod 600 "$TOKEN_DEST"
    CA_LINE="# PLEXUS_CA_FILE=$ETC_DIR/ca.pem   (trust a private CA for an https orchestrator)"
    if [[ -n "$CA_CERT" ]]; then
        cp "$CA_CERT" "$ETC_DIR/ca.pem"
        chmod 644 "$ETC_DIR/ca.pem"
        CA_LINE="PLEXUS_CA_FILE=$ETC_DIR/ca.pem"
    fi
    cat >"$CONFIG" <<EOF
# Plexus learner agent configuration, read by \`python -m deploy.agent_service --config $CONFIG\`.
# Written by install-agent.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ). Restart the service after edits.
PLEXUS_ORCHESTRATOR=$ORCHESTRATOR
PLEXUS_JOIN_TOKEN_FILE=$TOKEN_DEST
PLEXUS_NAME=${NAME:-$(hostname)}
PLEXUS_RELAY=$RELAY
PLEXUS_HOST=0.0.0.0
PLEXUS_PORT=$PORT
PLEXUS_DATA_DIR=$DATA_DIR
$CA_LINE
EOF
    chmod 644 "$CONFIG"
    umask 022
    if [[ $SYSTEMD -eq 1 ]]; then
        chown "$SERVICE_USER:" "$TOKEN_DEST" "$DATA_DIR"
        chmod 700 "$DATA_DIR"
    fi
    "$VENV/bin/python" -m deploy.agent_service --config "$CONFIG" --check >/dev/null
fi

# ---------------------------------------------------------------------------- service unit
cat >"$UNIT_PATH" <<EOF
[Unit]
Description=Plexus learner agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=$SERVICE_USER
ExecStart=$VENV/bin/python -m deploy.agent_service --config $CONFIG
Restart=on-failure
RestartSec=5
# Keep the agent in its lane: no new privileges, read-only system, its own data dir writable.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=$DATA_DIR
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target
EOF

if [[ $SYSTEMD -eq 1 ]]; then
    systemctl daemon-reload
    if [[ $WRITE_CONFIG -eq 1 ]]; then
        systemctl enable --now plexus-agent.service
        say "plexus-agent.service enabled and started; follow it with: journalctl -u plexus-agent -f"
    else
        say "unit installed; write $CONFIG and start it with: systemctl enable --now plexus-agent"
    fi
else
    mkdir -p "$PREFIX/bin"
    cat >"$PREFIX/bin/plexus-agent" <<EOF
#!/bin/sh
# Run the agent in the foreground with this installation's config (no systemd).
exec "$VENV/bin/python" -m deploy.agent_service --config "$CONFIG" "\$@"
EOF
    chmod 755 "$PREFIX/bin/plexus-agent"
    say "installed under $PREFIX (no systemd): run $PREFIX/bin/plexus-agent; unit rendered to $UNIT_PATH"
fi
