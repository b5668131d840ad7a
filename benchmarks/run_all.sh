#!/usr/bin/env bash
# Every benchmark in one go, each under its own time limit, inside one overall budget: what finishes is kept.
#
#   benchmarks/run_all.sh cuda [OUTDIR]   # one GPU (sizes for an H100 / H200): about 9 minutes
#   benchmarks/run_all.sh quick [OUTDIR]  # CPU, tiny sizes: checks that every script runs (about 3 minutes)
#
# Each script writes benchmarks/results/<name>-<cpu|cuda>.json itself; with OUTDIR, each JSON (and this run's
# log, run_all.log) is also copied there as soon as it lands, so a run cut short still hands back what it
# finished. BUDGET_S (default 580, under a 600-s device call) caps the whole run; a step gets min(its own limit, what is left).
# The CPU figures of the book come from the scripts' own defaults (see each script's docstring): they take
# longer than a GPU session allows for all of them at once, so this script does not run them.
set -u
mode=${1:?usage: benchmarks/run_all.sh cuda|quick [OUTDIR]}
out=${2:-}
PY=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
budget=${BUDGET_S:-580}
start=$(date +%s)
log=${out:+$out/run_all.log}
log=${log:-/dev/null}
[ -n "$out" ] && mkdir -p "$out"
export PYTHONUNBUFFERED=1
# on a machine without internet: the offline kit (make offline-kit; torchattacks for the textbook baseline,
# Fashion-MNIST) when it was carried along
root=$(cd "$here/.." && pwd)
# shellcheck source=scripts/offline_env.sh
. "$root/scripts/offline_env.sh"
offline_env || exit 3

# ONLY (default: the four below) names the steps to run, e.g. ONLY="training pruning". Two more steps run on a GPU
# only when named: training-small, fit's CUDA variants on MNIST_Small (Fashion-MNIST from the offline kit), where
# kernel launches bound a small network and CUDA graphs may pay (about 2 minutes; training-mnist_small-cuda.json);
# profile, where a training step's time goes on PreAct-ResNet-18 and on MNIST_Small, and a MixTrain and a full
# symbolic-training step's on MNIST_Small (bench_profile.py, about 3.5 minutes; profile-cuda.json,
# profile-mnist_small-cuda.json, profile-certified-cuda.json). `quick` checks the profile script too.
default_steps="training bounds certified pruning"
[ "$mode" = quick ] && default_steps="$default_steps profile"
only=${ONLY:-$default_steps}
wanted() { case " $only " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# step LIMIT_S RESULT_NAME OUT_NAME -- command...: runs the command under min(LIMIT_S, what is left), then
# copies benchmarks/results/RESULT_NAME to OUTDIR/OUT_NAME when it exists and is newer than the step's start.
step() {
    local limit=$1 result=$2 name=$3
    shift 4
    local left=$((budget - ($(date +%s) - start)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 10 ]; then
        echo "## skipped (budget spent): $*" | tee -a "$log"
        return
    fi
    echo "## $(date +%T) [${limit} s] $*" | tee -a "$log"
    local marker
    marker=$(mktemp)
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    echo "## exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$log"
    local path="${ROBUSTLIB_BENCH_RESULTS:-$here/results}/$result"
    if [ -n "$out" ] && [ -f "$path" ] && [ "$path" -nt "$marker" ]; then
        cp "$path" "$out/$name"
    fi
    rm -f "$marker"
}

case "$mode" in
cuda)
    { nvidia-smi -L; "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } \
        2>&1 | tee -a "$log"
    # training throughput: fit's CUDA variants in one process (a compiled one pays ~25 s of compilation in its
    # warm-up, so only the best compiled one runs; VARIANTS="..." names others), Fast-AT after it; then the
    # kernel benchmarks
    wanted training && step ${TRAIN_S:-200} training-cuda.json training-cuda.json -- "$PY" "$here/bench_training.py" \
        --device cuda --n 10240 --repeat 2 --fast-at \
        --variants ${VARIANTS:-default bf16 channels-last bf16+channels-last compile+bf16+channels-last}
    wanted training-small && step ${TRAIN_SMALL_S:-150} training-mnist_small-cuda.json \
        training-mnist_small-cuda.json -- "$PY" "$here/bench_training.py" --device cuda --network mnist_small \
        --repeat 3 --variants default bf16+channels-last compile+bf16+channels-last cudagraphs+bf16+channels-last
    # 5 batches: PreAct-ResNet-18's trace of 20 batches took longer to summarise than the step's 90 s on the H200
    # (2026-11-28); 5 batches and three variants took 129 s there, compilation included
    wanted profile && step ${PROFILE_S:-170} profile-cuda.json profile-cuda.json -- "$PY" "$here/bench_profile.py" \
        --device cuda --batches 5 --variants fp32 default compile+bf16+channels-last
    wanted profile && step 60 profile-mnist_small-cuda.json profile-mnist_small-cuda.json -- "$PY" \
        "$here/bench_profile.py" --device cuda --network mnist_small --variants fp32 default \
        "bf16+channels-last, mixed-layout flatten"
    wanted profile && step 60 profile-certified-cuda.json profile-certified-cuda.json -- "$PY" \
        "$here/bench_profile.py" --device cuda --objective mixtrain-k5 symbolic
    wanted bounds && step 100 bounds-cuda.json bounds-cuda.json -- "$PY" "$here/bench_bounds.py" --device cuda \
        --batch-sizes 1 16 128 --target-seconds 0.3 --max-repeats 5
    # certified training on MNIST_Small and MNIST_Large; symbolic bounds against their floor at batch 8 and 64
    wanted certified && step 150 certified-cuda.json certified-cuda.json -- "$PY" "$here/bench_certified.py" \
        --device cuda --floor-batches 8 64
    wanted pruning && step 240 pruning-cuda.json pruning-cuda.json -- "$PY" "$here/bench_pruning.py" \
        --device cuda --model preact_resnet18 --n 20000 --epochs 4 --batch-size 512 --select-batch-sizes 256
    ;;
quick)   # results to a temporary folder: a check never overwrites the committed figures
    export ROBUSTLIB_BENCH_RESULTS=${ROBUSTLIB_BENCH_RESULTS:-$(mktemp -d)}
    wanted training && step 120 training-cpu.json training-cpu.json -- "$PY" "$here/bench_training.py" \
        --device cpu --quick --variants fp32 default
    wanted bounds && step 60 bounds-cpu.json bounds-cpu.json -- "$PY" "$here/bench_bounds.py" --device cpu --quick
    wanted certified && step 120 certified-cpu.json certified-cpu.json -- "$PY" "$here/bench_certified.py" \
        --device cpu --quick
    # PreAct-ResNet-18's convolution kernels are tuned inside the first selection timings: about 70 s of its 2 min
    wanted pruning && step 180 pruning-cpu.json pruning-cpu.json -- "$PY" "$here/bench_pruning.py" \
        --device cpu --quick --model preact_resnet18 --n 300 --batch-size 64
    wanted profile && step 60 profile-cpu.json profile-cpu.json -- "$PY" "$here/bench_profile.py" --device cpu \
        --quick
    ;;
*)
    echo "unknown mode '$mode': use cuda (one GPU) or quick (CPU, tiny sizes)" >&2
    exit 2
    ;;
esac
echo "## done in $(( $(date +%s) - start )) s" | tee -a "$log"
