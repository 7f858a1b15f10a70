#!/usr/bin/env bash
# The GPU run in one command: builds the extension in place and runs one stage.
#
#   benchmarks/gpu_suite.sh STAGE OUTDIR [SUITE OPTIONS...]
#
# STAGE:
#   stamp       (run where .git exists, before copying the tree) writes COMMIT with `git rev-parse
#               HEAD` (+ "-dirty"), so that results name their commit on a machine without .git
#   first-contact  the one stage that fits a 15-minute GPU loan: at most 4.5 minutes of wall time.
#               Installs the matching dist/ wheel (`make wheel-gpu-server`; else builds in place for
#               this GPU only), then numerics of every Triton kernel family, the whole model, the
#               CUDA elastic warp and memcheck, then the headline benchmark until the deadline
#               (unet_fast.benchmark.first_contact). Options: --dry-run (the same plan on the CPU at
#               tiny sizes, Triton under TRITON_INTERPRET=1; no GPU needed), --only STEP,... (rerun
#               those steps into the existing OUTDIR/first-contact.json; "install" reinstalls).
#               OUTDIR gets first-contact.json, autotune.json, summary.txt and the logs.
#   build       only builds unet_fast._C in place for this GPU's architecture
#   test        pytest on the GPU with UNET_FAST_AUTOTUNE=0 (each Triton kernel compiles its default
#               tile once instead of timing every tile; a sweep test runs the other tiles): first the
#               GPU-marked tests, then compute-sanitizer memcheck on the GPU tests of the CUDA kernels
#               (center_crop_concat, elastic_warp; a recorded skip where compute-sanitizer is missing
#               or does not support the device), then the rest of tests/ but "slow" (the Triton kernel
#               tests, which run on CUDA here) in the time left
#   bench       the benchmark suite (torch.compile in its default mode), model cases only
#   bench-ops   the op benchmarks (unet_fast.benchmark.ops; benchmarks/bench_<op>.py) through the suite
#   bench-full  the suite with torch.compile mode max-autotune, paper model at batch 8
#
# Each stage is sized to finish within 10 minutes on an H100: the suite stops starting cases
# SUITE_DEADLINE_S (default 450) seconds after the script started and records the rest as
# skipped; every command is killed at HARD_DEADLINE_S (default 570) seconds. OUTDIR gets <stage>.log, the JSON and PNG of
# the stage and summary.txt (one line per step: name, exit status, seconds). Options after OUTDIR
# go to the suite (`unet-fast bench --help`), e.g. `bench OUT-fp32 --dtypes fp32` to split a
# stage that the budget cuts short over two calls.
#
# Needs on the machine: torch, triton, nvcc, pybind11, ninja, setuptools; no network, no .git.
# PYTHON selects the interpreter (default python3); MAX_JOBS the compile jobs (default 16);
# UNET_FAST_COMMIT names the commit where there is no .git (else COMMIT or unet_fast/_commit.txt).
set -uo pipefail

STAGE=${1:-}
OUTDIR=${2:-}
shift 2 2>/dev/null || shift $#
SUITE_OPTIONS=("$@")
if [[ -z "$STAGE" || ( -z "$OUTDIR" && "$STAGE" != stamp ) ]]; then
  sed -n '2,37p' "$0" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STARTED_AT=$(date +%s.%N)
PYTHON=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16}
SUITE_DEADLINE_S=${SUITE_DEADLINE_S:-450}
HARD_DEADLINE_S=${HARD_DEADLINE_S:-570}

if [[ "$STAGE" == stamp ]]; then
  commit=$(git rev-parse HEAD) || exit 1
  git diff --quiet HEAD -- || commit="$commit-dirty"
  echo "$commit" > COMMIT
  echo "wrote COMMIT: $commit"
  exit 0
fi

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG="$OUTDIR/$STAGE.log"
SUMMARY="$OUTDIR/summary.txt"
: > "$LOG"

# first-contact: install (unless --only leaves it out), then the Python driver, which keeps the
# 4.5-minute deadline counted from STARTED_AT; the outer timeout is a backstop 15 s past it.
first_contact() {
  local dry_run=() only="" only_given=0 options=() site=${FIRST_CONTACT_SITE:-${TMPDIR:-/tmp}/unet_fast_site} pythonpath
  while (( $# )); do
    case "$1" in
      --dry-run) dry_run=(--dry-run) ;;
      --only) only=${2:-}; only_given=1; shift ;;
      --only=*) only=${1#--only=}; only_given=1 ;;
      *) echo "first-contact: unknown option '$1' (--dry-run, --only STEP,...)" | tee -a "$LOG" >&2; return 2 ;;
    esac
    shift
  done
  if [[ -z "${UNET_FAST_COMMIT:-}" ]]; then
    if [[ -d .git ]]; then UNET_FAST_COMMIT=$(git rev-parse HEAD 2>/dev/null)
    elif [[ -s COMMIT ]]; then UNET_FAST_COMMIT=$(head -n 1 COMMIT); fi
    export UNET_FAST_COMMIT
  fi
  if [[ -z "$only" || ",$only," == *,install,* || ! -s "$OUTDIR/install.json" ]]; then
    timeout --kill-after=5 250 "$PYTHON" unet_fast/benchmark/first_contact_install.py "$ROOT" "$OUTDIR" "$site" \
      --deadline 240 "${dry_run[@]}" 2>&1 | tee -a "$LOG"
  fi
  only=$(echo ",$only," | sed 's/,install,/,/g; s/^,*//; s/,*$//')
  if [[ -n "$only" ]]; then options=(--only "$only")
  elif (( only_given )); then options=(--only environment)  # --only install: no other step
  fi
  pythonpath=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("pythonpath", ""))' \
    "$OUTDIR/install.json" 2>/dev/null) || pythonpath=$ROOT
  [[ -n "$pythonpath" ]] || pythonpath=$ROOT
  # from OUTDIR, so that `import unet_fast` finds the installed wheel (or the tree) through PYTHONPATH alone
  (cd "$OUTDIR" && PYTHONPATH="$pythonpath" PYTHONUNBUFFERED=1 timeout --kill-after=5 285 "$PYTHON" \
    -m unet_fast.benchmark.first_contact "$OUTDIR" --started-at "$STARTED_AT" "${dry_run[@]}" "${options[@]}") \
    2>&1 | tee -a "$LOG"
  return "${PIPESTATUS[0]}"
}
if [[ "$STAGE" == first-contact ]]; then
  first_contact "${SUITE_OPTIONS[@]}"
  exit $?
fi

# step NAME COMMAND...: runs COMMAND with output into the stage log, records status and time.
step() {
  local name=$1 started=$SECONDS status
  shift
  echo "=== $name: $*" | tee -a "$LOG"
  "$@" 2>&1 | tee -a "$LOG"
  status=${PIPESTATUS[0]}
  echo "$STAGE/$name $status $((SECONDS - started))s" | tee -a "$SUMMARY" "$LOG"
  return "$status"
}

record_skip() {
  echo "$STAGE/$1 skipped: $2" | tee -a "$SUMMARY" "$LOG"
}

build() {
  # Only this GPU's architecture: the full sm_80 + sm_90 build is checked elsewhere (make test).
  local arch
  arch=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || return 1
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} UNET_FAST_FORCE_CUDA=1 \
    "$PYTHON" setup.py build_ext --inplace || return 1
  "$PYTHON" -c "import unet_fast, json; info = unet_fast.build_info(); print(json.dumps(info)); \
assert info['extension'] and info['cuda_kernels'], 'the CUDA extension did not load'"
}

# Seconds left until the hard deadline, at least $1.
left() {
  local seconds=$((HARD_DEADLINE_S - SECONDS))
  (( seconds < $1 )) && seconds=$1
  echo "$seconds"
}

# The suite stops starting cases at SUITE_DEADLINE_S and is killed at HARD_DEADLINE_S; its JSON is
# rewritten after every case, so a killed run leaves what it measured ("complete": false).
suite() {
  local budget=$((SUITE_DEADLINE_S - SECONDS))
  (( budget < 60 )) && budget=60
  timeout --kill-after=15 "$(left 90)" \
    "$PYTHON" -m unet_fast.benchmark --device cuda --time-budget "$budget" "$@" "${SUITE_OPTIONS[@]}"
}

if [[ -z "${UNET_FAST_COMMIT:-}" && ! -d .git && ! -s COMMIT && ! -s unet_fast/_commit.txt ]]; then
  echo "warning: no .git, UNET_FAST_COMMIT, COMMIT or unet_fast/_commit.txt: results will not name a commit" \
    "(run 'benchmarks/gpu_suite.sh stamp' before copying the tree)" | tee -a "$LOG"
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
  2>&1 | tee -a "$LOG" || { echo "gpu_suite: no usable CUDA device" | tee -a "$SUMMARY"; exit 1; }

step build build || exit 1
case "$STAGE" in
  build) ;;
  test)
    failed=0
    # Autotuning would compile and time every tile of every kernel for every test shape: minutes.
    export UNET_FAST_AUTOTUNE=0
    step pytest-gpu timeout "$(left 60)" "$PYTHON" -m pytest -q -rs -p no:cacheprovider -m gpu tests \
      --junitxml "$OUTDIR/pytest-gpu.xml" || failed=1
    SANITIZER=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2>/dev/null)
    if [[ -n "$SANITIZER" ]]; then
      kernel_tests=()
      for extra in tests/ops/test_*crop_concat*.py tests/ops/test_elastic*.py; do [[ -f "$extra" ]] && kernel_tests+=("$extra"); done
      # Without the caching allocator every tensor is its own allocation, so memcheck sees its bounds.
      export PYTORCH_NO_CUDA_MEMORY_CACHING=1
      step memcheck timeout "$(left 60)" "$SANITIZER" --tool memcheck --error-exitcode 99 \
        "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu "${kernel_tests[@]}"
      status=$?
      unset PYTORCH_NO_CUDA_MEMORY_CACHING
      if (( status != 0 )) && tail -n 40 "$LOG" | grep -qi "not supported"; then
        record_skip memcheck-support "compute-sanitizer does not support this device or driver (see $STAGE.log)"
      elif (( status == 5 )); then
        record_skip memcheck-tests "no GPU-marked tests in ${kernel_tests[*]}"
      elif (( status != 0 )); then
        failed=1
      fi
    else
      record_skip memcheck "compute-sanitizer not found on PATH or in ${CUDA_HOME:-/usr/local/cuda}/bin"
    fi
    # the slow CPU-only training test runs in CI and would only spend GPU time here
    step pytest-rest timeout "$(left 30)" "$PYTHON" -m pytest -q -rs -p no:cacheprovider -m "not gpu and not slow" \
      tests --junitxml "$OUTDIR/pytest-rest.xml" || failed=1
    exit $failed
    ;;
  bench)
    step suite suite --no-ops --json "$OUTDIR/bench.json" --plot "$OUTDIR/bench.png"
    ;;
  bench-ops)
    step suite suite --modes none --json "$OUTDIR/bench-ops.json"
    ;;
  bench-full)
    step suite suite --full --no-ops --shapes paper-572-b8 --modes forward,train-step \
      --json "$OUTDIR/bench-full.json" --plot "$OUTDIR/bench-full.png"
    ;;
  *)
    echo "unknown stage '$STAGE' (stamp, first-contact, build, test, bench, bench-ops, bench-full)" | tee -a "$LOG" >&2
    exit 2
    ;;
esac
