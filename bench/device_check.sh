#!/usr/bin/env bash
# The GPU checks (issues 3-7 and 16) as one command on a lent device machine, run from the repository root.
#
# Here, before any device time is spent:
#   bash bench/device_check.sh --plan       the device-time plan (15 min for a task: start-up, wheel transfer,
#                                           this script, one rerun)
#   bash bench/device_check.sh --dry-run    every section on this CPU with small sizes, the DFT GPU branches on
#                                           CPU stand-ins (tests/gpu_standins.py); same script, same logs
#   bash bench/device_check.sh --prepare    copy the rMD17 files the students/distill sections read into
#                                           .device-data/rmd17 (git-ignored, 3 MB): carry ".device-data"
#   ../shared/tools/device-wheels           pyscf + gpu4pyscf + libxc wheels in pieces .devw1..N (the device
#                                           image has no pyscf/gpu4pyscf and no package index)
# There: make the piece calls device-wheels prints back to back (the machine goes back after 30 s idle); the last
#   one carries [".devwN", ".device-data"], has timeout_s = PLAN_CALL_TIMEOUT_S from --plan, and ends with
#   `... && export PYTHONPATH=/tmp/site:$PYTHONPATH && bash bench/device_check.sh`.
#   Rerun failed sections at once, on the same warm machine:
#   `export PYTHONPATH=/tmp/site:$PYTHONPATH; bash bench/device_check.sh dft fused`.
#
# Sections (default: all): tests dft render pretrain students distill fused, each under its own timeout; logs
# and summary.txt go to $OUT (the device tool brings them back) or ./device-check. Nothing here needs ray or
# webdataset: the fused stage runs in-process on the one GPU. Exit status: the number of failed sections.
#
# Every section of the real mode measures the GPU or fails loudly, so a run on a machine without one fails
# each at its start with one line (exit status 3 each):
#   tests     pytest -m gpu with bench/_gpu_tests.py: no CUDA for torch fails before collection; a GPU test
#             that skips (or xfails), or a run with no GPU test, fails the section and is named
#   dft       bench dft --gpu-only behind bench/_cuda.py: needs CuPy + GPU4PySCF on a CUDA device
#   render, pretrain, students, distill    their benchmark on CUDA behind bench/_cuda.py: needs torch on a
#             CUDA device, and fails afterwards if torch allocated no GPU memory (a quiet CPU fallback)
#   fused     DFT + rendering in one process behind bench/_cuda.py (torch and GPU4PySCF): the steady mol/s
#             after the first molecule (start-up excluded), beside the 1.3 mol/s anchor
# --dry-run runs the same commands on the CPU with small sizes and the gates off (skipped GPU tests counted).
set -u
cd "$(dirname "$0")/.."

mode=device
case "${1:-}" in
  --plan|--dry-run|--prepare) mode=${1#--}; shift ;;
esac
all="tests dft render pretrain students distill fused"
sections=${*:-$all}

# ---------------------------------------------------------------- the device-time plan (seconds)
declare -A LIMIT=([tests]=70 [dft]=35 [render]=20 [pretrain]=25 [students]=20 [distill]=30 [fused]=45)
BUDGET=900           # a task's device time, everything included
START=120            # a fresh machine's start ("a minute or more"; estimate)
PIECE_CALL=30        # one wheel-piece call on the warm machine: send about 60 MiB, copy it (estimate)
INSTALL=20           # untar + pip install --no-index of the wheels, on the last piece call (estimate)
CALL_SLACK=20        # interpreter start-ups, nvidia-smi, the summary
pieces=$(ls -d .devw[0-9]* 2>/dev/null | wc -l)
[ "$pieces" -gt 0 ] || pieces=5   # not prepared yet: pyscf + gpu4pyscf + libxc, about 235 MiB in 56 MiB pieces
sections_s=0
for s in $sections; do sections_s=$((sections_s + ${LIMIT[$s]:-0})); done
call_s=$((sections_s + CALL_SLACK))
one_run=$((START + pieces * PIECE_CALL + INSTALL + call_s))
rerun=$call_s        # the same sections again, at once, on the still-warm machine (wheels still in /tmp)

plan() {
  echo "device-time plan for: $sections"
  echo "  machine start-up (estimate)                      ${START} s"
  echo "  wheel pieces: $pieces calls x ${PIECE_CALL} s + install ${INSTALL} s    $((pieces * PIECE_CALL + INSTALL)) s"
  local line="" s
  for s in $sections; do line="$line $s ${LIMIT[$s]:-?}"; done
  echo "  this script, every section at its timeout:       ${call_s} s  (${line# } + ${CALL_SLACK} s)"
  echo "  one run, worst case                              ${one_run} s"
  echo "  one rerun of it at once on the warm machine      ${rerun} s"
  echo "  total                                            $((one_run + rerun)) s of ${BUDGET} s"
  echo "PLAN_BUDGET_S=$BUDGET"
  echo "PLAN_ONE_RUN_S=$one_run"
  echo "PLAN_RERUN_S=$rerun"
  echo "PLAN_CALL_TIMEOUT_S=$((call_s + 30))"
  echo "PLAN_PYTHON=${PYTHON:-python3}"
}

if [ "$mode" = plan ]; then
  plan
  [ $((one_run + rerun)) -le "$BUDGET" ] || { echo "over budget: shorten the sections' timeouts"; exit 1; }
  exit 0
fi

# ---------------------------------------------------------------- rMD17 files for the students/distill sections
data=${EDG_DEVICE_DATA:-.device-data}
if [ "$mode" = prepare ]; then
  src=${EDG_RMD17_ROOT:-../shared/data/rmd17}
  mkdir -p "$data/rmd17"
  for f in rmd17_aspirin_train_01.npz rmd17_aspirin_test_01.npz; do  # bench students and bench distill read these
    cp "$src/$f" "$data/rmd17/$f" || { echo "prepare: $src/$f is missing (set EDG_RMD17_ROOT)"; exit 1; }
  done
  echo "prepared $data/rmd17 ($(du -sh "$data" | cut -f1)): carry \"$data\" with the last wheel piece"
  exit 0
fi
if [ -d "$data/rmd17" ]; then
  export EDG_RMD17_ROOT="$PWD/$data/rmd17"
elif [ "$mode" = device ]; then
  echo "no $data/rmd17 here: the students and distill sections will fail (run --prepare here and carry $data)"
fi

# ---------------------------------------------------------------- run
if [ "$mode" = dry-run ]; then
  if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
  out=${OUT:-device-check-dry}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  PY=${PYTHON:-python3}   # the device image's interpreter is python3 (it holds torch and cupy)
  out=${OUT:-device-check}
fi
mkdir -p "$out"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" EDG_CACHE=${EDG_CACHE:-/tmp/edg-cache} PYTHONUNBUFFERED=1
gpu_tests=$(grep -lE "^(@pytest\.mark\.gpu|pytestmark.*mark\.gpu)" tests/test_*.py | tr '\n' ' ')  # marked, not mentioned
failed=0

step() {  # step NAME COMMAND...: run under the section's timeout, keep the log, summarise
  local name=$1 limit=${LIMIT[$1]}
  shift
  [ "$mode" = dry-run ] && limit=600  # a shared 2-core CPU, not the device: the limits are the device's
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || failed=$((failed + 1))
  local note=""
  [ $rc -eq 124 ] && note=" TIMEOUT after ${limit} s"
  { echo "== $name (rc $rc$note, $((SECONDS - t0)) s of ${limit} s): $*"
    grep -v -i "warn" "$out/$name.log" | tail -n 12; } >> "$out/summary.txt"
}

{ date; echo "mode: $mode, python: $PY"; plan | grep -v "^PLAN_"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1
  $PY - <<'VERSIONS'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for name in ("pyscf", "gpu4pyscf", "cupy"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:
        print(name, "not importable:", type(e).__name__, e)
VERSIONS
  echo "rMD17: ${EDG_RMD17_ROOT:-not prepared}"
} > "$out/summary.txt" 2>&1

# real mode: each section measures the GPU or fails (bench/_cuda.py, bench/_gpu_tests.py stop it at its start)
for s in $sections; do
  if [ "$mode" = dry-run ]; then
    case $s in
      tests)    step tests bash -c "$PY -m pytest -q -p no:cacheprovider tests/test_gpu_readiness.py && \
                                    $PY -m pytest -q -p no:cacheprovider -p bench._gpu_tests --gpu-dry-run \
                                    -m gpu $gpu_tests" ;;
      dft)      step dft $PY -m bench._cuda --dry-run dft --n=1 --quick ;;
      render)   step render $PY -m bench._cuda --dry-run render --device=cpu --n=1 --batch=1 ;;
      pretrain) step pretrain $PY -m bench._cuda --dry-run pretrain --quick --steps=1 ;;
      students) step students $PY -m bench._cuda --dry-run students --quick --cpu --models=schnet ;;
      distill)  step distill $PY -m bench._cuda --dry-run distill --quick --device=cpu ;;
      fused)    step fused $PY -m bench._cuda --dry-run fused --n=2 --quick ;;
      *) echo "unknown section $s ($all)" >> "$out/summary.txt"; failed=$((failed + 1)) ;;
    esac
  else
    case $s in
      tests)    step tests $PY -m pytest -q -p no:cacheprovider -p bench._gpu_tests -m gpu $gpu_tests ;;
      dft)      step dft $PY -m bench._cuda dft --n=8 --gpu-only ;;
      render)   step render $PY -m bench._cuda render --device=cuda ;;
      pretrain) step pretrain $PY -m bench._cuda pretrain ;;
      students) step students $PY -m bench._cuda students ;;
      distill)  step distill $PY -m bench._cuda distill --device=cuda ;;
      fused)    step fused $PY -m bench._cuda fused --n=12 ;;  # 12 of the 40 embedded QM9 molecules
      *) echo "unknown section $s ($all)" >> "$out/summary.txt"; failed=$((failed + 1)) ;;
    esac
  fi
done
echo "failed sections: $failed" >> "$out/summary.txt"
cat "$out/summary.txt"
exit $((failed > 255 ? 255 : failed))
