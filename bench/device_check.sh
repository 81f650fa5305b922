#!/usr/bin/env bash
# The GPU checks of issues 3-7 as one command on the device machine (run from the repository root).
#
#   1. here:  ../shared/tools/device-wheels      (pyscf + gpu4pyscf + libxc wheels, carried in pieces)
#   2. there: the piece calls it prints; the last one ends with
#             `... && export PYTHONPATH=/tmp/site:$PYTHONPATH && bash bench/device_check.sh`
#   or, on the same warm machine later: `export PYTHONPATH=/tmp/site:$PYTHONPATH; bash bench/device_check.sh fused`
#
# Sections (default: all, about 8 minutes at most): tests dft render pretrain students distill fused.
# Each runs under its own timeout; logs and summary.txt go to $OUT (the device tool brings them back) or
# ./device-check. Nothing here needs ray or webdataset: the fused stage runs in-process on the one GPU.
set -u
out=${OUT:-device-check}
mkdir -p "$out"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" EDG_CACHE=${EDG_CACHE:-/tmp/edg-cache} PYTHONUNBUFFERED=1
sections=${*:-tests dft render pretrain students distill fused}

step() {  # step NAME SECONDS COMMAND...: run with a timeout, keep the log, summarise
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  { echo "== $name (rc $rc, $((SECONDS - t0)) s): $*"; grep -v -i "warn" "$out/$name.log" | tail -n 12; } >> "$out/summary.txt"
}

{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  python -c "import pyscf, gpu4pyscf; print('pyscf', pyscf.__version__, 'gpu4pyscf', gpu4pyscf.__version__)"
} > "$out/summary.txt" 2>&1

for s in $sections; do
  case $s in
    tests)    step tests 120 python -m pytest -q -m gpu -p no:cacheprovider tests ;;
    dft)      step dft 90 python -m bench dft --n=8 ;;
    render)   step render 60 python -m bench render ;;
    pretrain) step pretrain 60 python -m bench pretrain ;;
    students) step students 45 python -m bench students ;;
    distill)  step distill 45 python -m bench distill ;;
    fused)    step fused 90 python -m bench fused --n=40 ;;  # the 40 embedded QM9 molecules
    *) echo "unknown section $s (tests dft render pretrain students distill fused)" >> "$out/summary.txt" ;;
  esac
done
cat "$out/summary.txt"
