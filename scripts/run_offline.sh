#!/usr/bin/env bash
# Run chapters on a machine that has PyTorch and the scientific stack but neither Jupyter nor internet (such as a
# lent GPU machine), from a checkout that carries the offline kit of `make offline-kit` (.whl/ and .data/):
#
#   scripts/run_offline.sh OUTDIR CHAPTER...     # e.g. scripts/run_offline.sh $OUT mixtrain
#
# It installs the wheels of .whl/ (WHEELS) into a folder of its own (SITE_DIR, default /tmp/robustlib-site;
# nothing is installed into the system), points ROBUSTLIB_DATA at .data/ (Fashion-MNIST's files), runs
# `python -m robustlib reproduce --preset $PRESET --only CHAPTER...` (PRESET default gpu) under BUDGET_S seconds
# (default 540: inside one 600-s call), and packs each chapter's executed notebook and results record
# (results/<preset>/<chapter>.ipynb and .json) into OUTDIR/results-<preset>.tar.gz as soon as the run ends, beside
# this run's log, OUTDIR/run_offline.log: two files, however many chapters. `tar xzf` it in the repository root.
# Exit status: reproduce's (124 when the budget ran out), 2 for bad arguments, 3 when the kit does not import.
set -u
out=${1:?usage: scripts/run_offline.sh OUTDIR CHAPTER...}
shift
if [ $# -lt 1 ]; then
    echo "name at least one chapter (a file stem in notebooks/, e.g. mixtrain)" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
preset=${PRESET:-gpu}
budget=${BUDGET_S:-540}
mkdir -p "$out"
log="$out/run_offline.log"
export PYTHONUNBUFFERED=1
# shellcheck source=scripts/offline_env.sh
. "$root/scripts/offline_env.sh"
offline_env || exit 3
if ! "$PY" -c "import papermill, ipykernel, ipywidgets, robustlib" >>"$log" 2>&1; then
    tail -n 5 "$log"
    echo "the offline kit does not import: run 'make offline-kit' where pip works and carry .whl/ along" | tee -a "$log"
    exit 3
fi
{ nvidia-smi -L 2>/dev/null; "$PY" -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee -a "$log"
marker=$(mktemp)
cd "$root" || exit 2
timeout --signal=INT --kill-after=20 "$budget" "$PY" -m robustlib reproduce --preset "$preset" --only "$@" 2>&1 \
    | tee -a "$log"
rc=${PIPESTATUS[0]}
made=()
for chapter in "$@"; do
    for ext in ipynb json; do
        f="results/$preset/$chapter.$ext"
        if [ -f "$f" ] && [ "$f" -nt "$marker" ]; then
            made+=("$f")
        fi
    done
done
rm -f "$marker"
if [ ${#made[@]} -gt 0 ]; then   # one file, however many chapters (a device call hands back at most 8 files)
    tar czf "$out/results-$preset.tar.gz" "${made[@]}"
    echo "## packed into results-$preset.tar.gz (tar xzf it in the repository root): ${made[*]}" | tee -a "$log"
fi
echo "## run_offline: exit $rc" | tee -a "$log"
exit "$rc"
