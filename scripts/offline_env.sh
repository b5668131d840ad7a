# Sourced by scripts/run_offline.sh and benchmarks/run_all.sh (not run on its own): makes the offline kit of
# `make offline-kit` usable on a machine that has PyTorch but neither Jupyter nor internet. Needs `root` (the
# repository), `PY` (the Python) and `log` (a file) set. It installs the wheels of $WHEELS (default $root/.whl) into
# $SITE_DIR (default /tmp/robustlib-site; nothing goes into the system), puts that folder and the repository on
# PYTHONPATH, and points ROBUSTLIB_DATA at $root/.data (Fashion-MNIST's files) when it exists and ROBUSTLIB_DATA is
# unset. Wheels that do not install (another Python version) are skipped when the Python has their packages anyway;
# else it returns 3.
offline_env() {
    local wheels=${WHEELS:-$root/.whl} site=${SITE_DIR:-/tmp/robustlib-site}
    if compgen -G "$wheels/*.whl" >/dev/null; then
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
                "$wheels"/*.whl >>"$log" 2>&1; then
            export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        elif "$PY" -c "import papermill, ipykernel, ipywidgets, torchattacks" 2>/dev/null; then
            # e.g. wheels for CPython 3.12 in a checkout used with another Python that has the packages anyway
            echo "the wheels of $wheels do not install for $PY; it has the kit's packages already: going on" \
                | tee -a "$log"
        else
            tail -n 5 "$log"
            echo "installing the wheels of $wheels failed, and $PY lacks the packages they hold" | tee -a "$log"
            return 3
        fi
    fi
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    if [ -d "$root/.data" ]; then
        export ROBUSTLIB_DATA=${ROBUSTLIB_DATA:-$root/.data}
    fi
}
