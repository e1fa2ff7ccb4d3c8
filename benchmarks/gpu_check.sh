#!/usr/bin/env bash
# The checks and measurements that need a CUDA device, in one command (under 8 minutes), run from anywhere after
# `./run.sh test` installed .venv (on a machine without a package index: benchmarks/gpu_env.sh install):
#
#   bash benchmarks/gpu_check.sh
#
# With GPU_CHECK_OUT=DIR the updated RESULTS.md and the stages' logs (gpu-check-logs.tgz) are copied there too,
# for a machine that is handed back after the run. GPU_CHECK_REHEARSE=1 runs every stage on the CPU at toy sizes
# and prints the table without recording it: a check of the script itself, which the test suite runs, so that
# the rare hour on a GPU is not lost to a broken stage. GPU_CHECK_PYTHON: the interpreter (default .venv's).
#
# Stages, in the order of what is still unmeasured (the figures the study's speed depends on first), each with
# its own time limit (cut to what is left of the whole budget, GPU_CHECK_BUDGET seconds, default 450), each run
# even when an earlier one failed; GPU_CHECK_STAGES=id,id runs only those (a rerun of what failed):
#   concurrent   concurrent trainings     benchmarks/study_throughput.py --device cuda --parallel 1,8,4,2: trainings
#                                         per hour and images/s all at once, MPS state
#   batched      batched group            benchmarks/batched_group.py: K U-Nets as one stacked (grouped-conv)
#                                         model against K separate steps, K = 1, 4, 8, fp32 and bf16
#   tests        pytest -m gpu            the CUDA-only tests
#   study        study                    a tiny study end to end on cuda (synth, prepare, study --executor local
#                                         --parallel 2, report), from the command line
#   profile      step profile             benchmarks/gpu_profile.py: one training alone at batch 32 and 64, timed
#                                         and profiled: the share of the step the GPU is busy, kernels per step
#   zoo          zoo                      hrnet_w48_ocr and upernet_internimage_l at 1024x2048, fp32 against bf16
#                                         (channels-last, and NCHW): time, peak memory, share of pixels whose
#                                         class differs
#   train-step   train_step               benchmarks/train_step.py --steps 5 --rounds 1 --alphas 1 on cuda: the
#                                         plain port, fp32, compiled, bf16, bf16 compiled, and with CUDA graphs
#                                         (GPU_CHECK_TRAIN_STEP_ARGS replaces its arguments)
#   standard     standard study           the semi-supervised benchmark's study (LDT + IM, DeepLabV3+) on cuda
#   deeplab      DeepLabV3+ step          benchmarks/deeplab_step.py: one supervised R50 step at crop 801,
#                                         batch 8, fp32 and bf16, and the projected time of one training;
#                                         one val image under UniMatch V1's windows (the validation's cost)
# Then one table (stage, what, result, status) is printed and appended to benchmarks/RESULTS.md with the device
# name, with the hours of the full paper study at each measured rate of concurrent trainings (its images seen in
# training: the study's plan, made on the CPU in the background while the tests run, never beside a
# measurement). Without a CUDA device it prints one line and exits 0. The logs stay in a folder under $TMPDIR or
# /tmp (named in the table's notes).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${GPU_CHECK_PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  echo "gpu_check: no .venv here; run ./run.sh test first (offline: bash benchmarks/gpu_env.sh install)"
  exit 2
fi
# the sizes of every stage: the real ones, or toy ones for a rehearsal on the CPU
if [ "${GPU_CHECK_REHEARSE:-0}" = 1 ]; then
  DEVICE=cpu RECORD=--no-record
  LIMIT_SCALE=3 BUDGET=${GPU_CHECK_BUDGET:-900}  # a shared 2-core machine (the test suite runs beside it)
  DEVICE_NAME="a CPU rehearsal ($(nproc) cores; toy sizes, no GPU figures)"
  STUDY_SYNTH="--train 12 --val 4 --test 2 --size 512x256" STUDY_BATCH=4
  TRAIN_STEP_ARGS="--steps 1 --batch 2 --alphas 1 --rounds 1 --skip-compile"
  ZOO_ARGS="--size 64x128 --repeats 1"
  CONCURRENT_ARGS="--waves --parallel 1,2 --train 8 --val 4 --size 256x128 --epochs 2 --batch 4"  # the GPU layout
  PLAN_SYNTH="--train 40 --val 10 --test 0"
  BATCHED_ARGS="--groups 1,2 --steps 1 --batch 2"
  PROFILE_ARGS="--batches 2 --steps 1"
  DEEPLAB_ARGS="--crop 129 --batch 2 --steps 1 --val-size 128x256"
else
  if [ "$("$PY" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null)" != "True" ]; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check"
    exit 0
  fi
  DEVICE=cuda RECORD=
  LIMIT_SCALE=1 BUDGET=${GPU_CHECK_BUDGET:-450}
  DEVICE_NAME=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
  DEVICE_NAME=${DEVICE_NAME:-$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || echo "unknown GPU")}
  STUDY_SYNTH="--train 48 --val 8 --test 4 --size 1024x512" STUDY_BATCH=8
  # 3 rounds of 2 alphas ran past 120 s on an H200 (compile); glibc's malloc is a CPU matter
  TRAIN_STEP_ARGS=${GPU_CHECK_TRAIN_STEP_ARGS:-"--steps 5 --rounds 1 --alphas 1 --variants plain,fp32,fp32-compile,bf16,bf16-compile,bf16-graphs"}
  ZOO_ARGS="--size 1024x2048 --repeats 3"
  CONCURRENT_ARGS="--parallel 1,8,4,2"  # the figures not measured yet first: a stage cut short keeps its rows
  PLAN_SYNTH="--train 2975 --val 500 --test 0"  # the split sizes of the real download
  BATCHED_ARGS="--groups 1,4,8 --steps 3"
  PROFILE_ARGS="--batches 32,64 --steps 20"
  DEEPLAB_ARGS="--steps 3"
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
CACHE=.bench  # generated stand-in data, kept between runs (a rehearsal keeps its own in $WORK)
[ "$DEVICE" = cpu ] && CACHE=$WORK/cache
mkdir -p "$CACHE"
: > "$WORK/stages.tsv"
echo "gpu_check on $DEVICE_NAME; logs in $WORK"
export PY WORK DEVICE STUDY_SYNTH STUDY_BATCH

# stage ID NAME WANTED_SECONDS DATA_FILE COMMAND...: run COMMAND with a time limit of WANTED_SECONDS or what is
# left of the budget (keeping 15 s for the summary), its output in $WORK/NAME.log, one line in stages.tsv
# (name, exit status, seconds, log, data file, limit); exit status 125: skipped for lack of time. A stage whose
# ID is not in GPU_CHECK_STAGES (when set) is left out.
stage() {
  local id=$1 name=$2 wanted=$3 data=$4
  shift 4
  if [ -n "${GPU_CHECK_STAGES:-}" ] && [[ ",$GPU_CHECK_STAGES," != *",$id,"* ]]; then
    return
  fi
  local log="$WORK/${name// /_}.log" left=$((BUDGET - (SECONDS - START) - 15)) limit rc began
  wanted=$((wanted * LIMIT_SCALE))
  limit=$((wanted < left ? wanted : left))
  if [ "$limit" -lt 10 ]; then
    echo "skipped: the time budget of ${BUDGET} s is spent" > "$log"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" 125 0 "$log" "" 0 >> "$WORK/stages.tsv"
    echo "[$name] skipped (no time left)"
    return
  fi
  echo "[$name] limit ${limit} s ..."
  began=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - began))" "$log" "$data" "$limit" \
    >> "$WORK/stages.tsv"
  echo "[$name] exit $rc after $((SECONDS - began)) s"
}

# the full paper study's images seen in training: its plan on stand-in data of the real split sizes (small
# images: the plan counts images, not pixels); run in the background while the CUDA tests run, for the summary's
# projection of the concurrent trainings' rates
full_plan() {
  local dir="$WORK/full-plan"
  # shellcheck disable=SC2086
  "$PY" -m cityscapes_lab synth "$dir/raw" $PLAN_SYNTH --size 256x128 --seed 0 || return $?
  "$PY" -m cityscapes_lab prepare --raw "$dir/raw" --out "$dir/prepared" --protocol paper || return $?
  "$PY" -m cityscapes_lab study --data "$dir/prepared" --out "$dir/runs" --plan --throughput 1 \
    --approaches all > "$WORK/full-plan.txt" || return $?
  sed -n 's/.* trainings; \([0-9,]*\) images seen in training.*/\1/p' "$WORK/full-plan.txt" | tr -d , \
    > "$WORK/full-plan-images"
  # "H hours one task at a time, of which P predicting": the predictions' time as a fraction of the training steps'
  sed -n 's/.*: \([0-9.]*\) hours one task at a time, of which \([0-9.]*\) predicting.*/\1 \2/p' \
    "$WORK/full-plan.txt" | awk '$1 > $2 { printf "%.4f\n", $2 / ($1 - $2) }' > "$WORK/full-plan-predicting"
}

# concurrent trainings sharing the device
# shellcheck disable=SC2086
stage concurrent "concurrent trainings" 240 "$WORK/throughput.json" "$PY" benchmarks/study_throughput.py \
  --device "$DEVICE" $CONCURRENT_ARGS --cache "$CACHE" --json "$WORK/throughput.json" --no-record

# a whole group as one stacked model (the batched experiment)
# shellcheck disable=SC2086
stage batched "batched group" 60 "$WORK/batched.json" "$PY" benchmarks/batched_group.py --device "$DEVICE" \
  $BATCHED_ARGS --json "$WORK/batched.json" --no-record

# the CUDA-only tests (the plan for the projection is made beside them: no measurement runs meanwhile)
PLAN_PID=
if [ -z "${GPU_CHECK_STAGES:-}" ] || [[ ",$GPU_CHECK_STAGES," == *",concurrent,"* ]]; then
  full_plan > "$WORK/full-plan.log" 2>&1 &
  PLAN_PID=$!
fi
pytest_gpu() {
  "$PY" -m pytest -m gpu -q -p no:cacheprovider tests || return $?
}
export -f pytest_gpu
stage tests "pytest -m gpu" 90 "" bash -c pytest_gpu
if [ -n "$PLAN_PID" ]; then
  wait "$PLAN_PID" || echo "gpu_check: the full study's plan failed (see $WORK/full-plan.log); no projection"
fi

# study_row RUNS JSON WHAT: the finished study in RUNS as one row of the table (its trainings' statuses, mean val
# mIoU, report files) in JSON; fails unless some trainings are done, none failed, and the report was written
study_row() {
  "$PY" - "$1" "$2" "$3" <<'EOF'
import json, sqlite3, sys
from pathlib import Path
runs, out, what = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
db = sqlite3.connect(runs / "results.sqlite")
status = dict(db.execute("SELECT status, COUNT(*) FROM trainings GROUP BY status").fetchall())
miou = db.execute("SELECT AVG(value) FROM scores WHERE split = 'val' AND metric = 'miou'").fetchone()[0]
report = sorted(p.name for p in (runs / "report").glob("*")) if (runs / "report").exists() else []
rows = [{"what": what,
         "result": f"trainings: {', '.join(f'{v} {k}' for k, v in sorted(status.items()))}; mean val mIoU "
                   f"{miou if miou is None else round(miou, 4)}; report: {', '.join(report) or 'none'}"}]
out.write_text(json.dumps({"rows": rows}))
sys.exit(0 if status.get("done", 0) and not status.get("failed") and report else 1)
EOF
}
export -f study_row

# a tiny study end to end on cuda, two trainings at once on the device
tiny_study() {
  local dir="$WORK/study"
  # shellcheck disable=SC2086  # the sizes are several words
  "$PY" -m cityscapes_lab synth "$dir/raw" $STUDY_SYNTH --seed 0 || return $?
  "$PY" -m cityscapes_lab prepare --raw "$dir/raw" --out "$dir/prepared" --protocol paper --labeled-fraction 0.25 \
    || return $?
  "$PY" -m cityscapes_lab study --data "$dir/prepared" --out "$dir/runs" --approaches ldt,im --runs 1 --models 2 \
    --set train.device="$DEVICE" --set train.epochs=2 --set train.batch_size="$STUDY_BATCH" \
    --set semisup.students=2 --set semisup.generations=1 --set semisup.n=2 --executor local --parallel 2 \
    || return $?
  "$PY" -m cityscapes_lab report "$dir/runs" || return $?
  study_row "$dir/runs" "$WORK/study.json" \
    "synth ($STUDY_SYNTH), prepare (paper), study LDT + IM, --executor local --parallel 2, report"
}
export -f tiny_study
stage study "study ($DEVICE, local x2)" 80 "$WORK/study.json" bash -c tiny_study

# where one training's step time goes: is the GPU busy, or waiting for the CPU?
# shellcheck disable=SC2086
stage profile "step profile" 60 "$WORK/profile.json" "$PY" benchmarks/gpu_profile.py --device "$DEVICE" \
  $PROFILE_ARGS --json "$WORK/profile.json" --no-record

# the zoo at 1024x2048: fp32 against bf16
# shellcheck disable=SC2086
stage zoo "zoo fp32 vs bf16" 80 "$WORK/zoo.json" "$PY" benchmarks/gpu_concurrent.py zoo \
  --models hrnet_w48_ocr,upernet_internimage_l $ZOO_ARGS --device "$DEVICE" --cache "$CACHE" --json "$WORK/zoo.json"

# the training step, run from a scratch copy of benchmarks/ so that its own table lands in a scratch RESULTS.md
# (read into the summary) rather than in the repository's
mkdir -p "$WORK/bench"
cp benchmarks/*.py "$WORK/bench/"
# shellcheck disable=SC2086
stage train-step "train_step" 150 "$WORK/bench/RESULTS.md" "$PY" "$WORK/bench/train_step.py" $TRAIN_STEP_ARGS

# the semi-supervised benchmark's study (standard protocol) on cuda: a small DeepLabV3+ of UniMatch's layout, its
# recipe (SGD, poly, OHEM, online crops), LDT and one IM generation, scored with UniMatch's windows
standard_study() {
  local dir="$WORK/standard"
  "$PY" -m cityscapes_lab synth "$dir/raw" --train 16 --val 4 --test 0 --size 512x256 --seed 0 || return $?
  "$PY" -m cityscapes_lab prepare --raw "$dir/raw" --out "$dir/prepared" --protocol standard --split-family seeded \
    --fractions 1/2 || return $?
  "$PY" -m cityscapes_lab study --data "$dir/prepared" --out "$dir/runs" --approaches im --config configs/ssl-supervised.toml \
    --config configs/ssl-im.toml --set study.labeled_subset=1/2 --set 'train.model_options={"width": 16}' \
    --set train.device="$DEVICE" --set train.epochs=2 --set train.batch_size=4 \
    --set train.lr_reference_batch=4 --set 'online.crop=[192, 192]' --set semisup.generations=1 \
    --set study.eval_window=192 || return $?
  "$PY" -m cityscapes_lab report "$dir/runs" || return $?
  study_row "$dir/runs" "$WORK/standard.json" "synth 16+4 at 512x256, prepare (standard, seeded 1/2), study LDT + \
IM (DeepLabV3+ width 16, the ssl recipes, crop 192, slide-unimatch-v1 192), report"
}
export -f standard_study
stage standard "standard study ($DEVICE)" 60 "$WORK/standard.json" bash -c standard_study

# the semi-supervised benchmark's supervised DeepLabV3+ R50 step (crop 801, batch 8)
# shellcheck disable=SC2086
stage deeplab "deeplabv3+ step" 45 "$WORK/deeplab.json" "$PY" benchmarks/deeplab_step.py --device "$DEVICE" \
  $DEEPLAB_ARGS --json "$WORK/deeplab.json" --no-record

# the table, with the full study's hours at the concurrent trainings' rates when its plan was made
FULL_IMAGES=$(cat "$WORK/full-plan-images" 2>/dev/null)
SUMMARY_ARGS=$RECORD
[ -n "$FULL_IMAGES" ] && SUMMARY_ARGS="$SUMMARY_ARGS --full-study-images $FULL_IMAGES"
FULL_PREDICTING=$(cat "$WORK/full-plan-predicting" 2>/dev/null)
[ -n "$FULL_IMAGES" ] && [ -n "$FULL_PREDICTING" ] && SUMMARY_ARGS="$SUMMARY_ARGS --full-study-predicting $FULL_PREDICTING"
# shellcheck disable=SC2086
"$PY" benchmarks/gpu_concurrent.py summary "$WORK" --device-name "$DEVICE_NAME" $SUMMARY_ARGS
if [ -n "${GPU_CHECK_OUT:-}" ]; then
  mkdir -p "$GPU_CHECK_OUT"
  cp benchmarks/RESULTS.md "$GPU_CHECK_OUT/RESULTS.md"
  tar czf "$GPU_CHECK_OUT/gpu-check-logs.tgz" -C "$WORK" --exclude='./study' --exclude='./standard' \
    --exclude='./full-plan' --exclude='./cache' . \
    && echo "gpu_check: RESULTS.md and the logs copied to $GPU_CHECK_OUT"
fi
echo "gpu_check: done in $((SECONDS - START)) s"
