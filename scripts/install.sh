#!/usr/bin/env bash
# Install worldmodel into ./.venv (created if needed), with the CPU build of torch on machines
# without an NVIDIA GPU, so a laptop or CI box never downloads a multi-GB CUDA build.
#
#   bash scripts/install.sh            # library + command line
#   WORLDMODEL_VENV=/path bash scripts/install.sh
#
# Environment: TORCH_VERSION (default 2.13.0), TORCH_CPU_INDEX (default PyTorch's CPU wheel index, used
# only when no CPU wheel of that version is available locally through PIP_FIND_LINKS), TORCH_BUILD:
#   auto (default): the CUDA build where `nvidia-smi` finds a GPU, else the CPU build; an installed torch is kept
#   cuda: the CUDA build, e.g. on a cluster's login node without a GPU for jobs that run on GPU nodes
#   cpu:  the CPU build
# (cuda / cpu replace an installed torch of the other kind).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${WORLDMODEL_VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true

TORCH_BUILD=${TORCH_BUILD:-auto}
case "$TORCH_BUILD" in
  auto | cuda | cpu) ;;
  *) echo "[install] TORCH_BUILD must be auto, cuda or cpu, got '$TORCH_BUILD'" >&2; exit 2 ;;
esac
installed=$("$VENV/bin/python" -c "import torch; print('cuda' if torch.version.cuda else 'cpu')" 2>/dev/null || echo none)
want=$TORCH_BUILD
if [ "$want" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then want=cuda; else want=cpu; fi
  [ "$installed" != none ] && want=$installed  # auto keeps the torch that is there
fi
if [ "$installed" != none ] && [ "$installed" != "$want" ]; then
  echo "[install] replacing the installed $installed build of torch with the $want build (TORCH_BUILD=$TORCH_BUILD)"
  $PIP uninstall -q -y torch
  installed=none
fi

if [ "$installed" = none ]; then
  if [ "$want" = cuda ]; then
    echo "[install] installing torch==$TORCH_VERSION (CUDA build)"
    # from the package index only: a local +cpu wheel (PIP_FIND_LINKS) would sort above the CUDA one
    PIP_FIND_LINKS= $PIP install -q "torch==$TORCH_VERSION"
    if [ "$("$VENV/bin/python" -c "import torch; print(bool(torch.version.cuda))")" != True ]; then
      echo "[install] error: the torch installed is not a CUDA build; install one by hand (https://pytorch.org)" >&2
      exit 1
    fi
  else
    local_wheel=""
    for d in ${PIP_FIND_LINKS:-}; do
      d=${d#file://}
      if ls "$d"/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then local_wheel=yes; fi
    done
    if [ -n "$local_wheel" ]; then
      echo "[install] installing the local CPU build torch==$TORCH_VERSION"
      $PIP install -q "torch==$TORCH_VERSION"
    else
      echo "[install] installing torch==$TORCH_VERSION (CPU build) from $TORCH_CPU_INDEX"
      $PIP install -q "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX"
    fi
  fi
fi

echo "[install] installing worldmodel and its dependencies"
$PIP install -q -e ".[test]"
"$VENV/bin/python" -c "import torch, decord, lightning, worldmodel; print('[install] ok: torch', torch.__version__, '| lightning', lightning.__version__, '| decord', decord.__version__)"
