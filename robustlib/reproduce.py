"""Batch reproduction: run the book's notebooks with papermill, keep results records, build the book.

    python -m robustlib reproduce --preset smoke [--only NAME ...]
    python -m robustlib build --preset best           # render already-executed notebooks, best preset per chapter
    python -m robustlib book --preset best            # smoke-execute chapters without real results, then build

``reproduce`` executes the notebooks listed in ``_toc.yml`` in order into
``results/<preset>/<name>.ipynb``; each notebook writes its results record
``results/<preset>/<name>.json`` through :class:`Record`. A failing notebook
does not stop the others; every failure is reported at the end and the exit
status is non-zero. ``build`` copies the executed notebooks next to the
book's pages in ``_build/source`` (per chapter the best preset that has
them, labelled with it: see :mod:`robustlib.book`), generates the pages made
from the results records, and runs ``jupyter-book build`` with execution
off, so committed full-scale outputs render without re-running.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from . import book, glance, performance, presets
from .machine import cpu_model, device_name  # noqa: F401 - re-exported: the benchmarks name devices with them

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- results records

def versions() -> dict:
    import numpy
    import torch
    import torchvision

    from . import __version__
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__, "robustlib": __version__}


class Record:
    """A notebook's results record: preset, device, versions, start time, wall-clock and rows.

    ``rec = Record("setting_the_stage", preset, results_dir)``; ``rec.add(**row)``
    per measured row; ``rec.save()`` writes ``<results_dir>/<notebook>.json``.

    Until then every row and run is also written there as it comes, marked ``"status": "running"``: a notebook
    cut short (a budget that ran out, a session that ended) leaves what it measured, never passed for a finished
    record (the book renders only records without a status or with ``"ok"``).
    """

    def __init__(self, notebook: str, preset: str, results_dir, config: dict | None = None, device=None,
                 namespace: dict | None = None):
        preset = presets.resolve(preset) if preset == "auto" else preset   # the preset it stands for on this machine
        self.notebook, self.preset = notebook, preset
        self.path = Path(results_dir) / f"{notebook}.json"
        self.config = dict(config or {})
        self.device = device_name(device)
        # a preset set by hand without its values (Jupyter, Colab): the record and its caption say what differs
        namespace = _notebook_namespace() if namespace is None else namespace
        self.modified = (presets.deviations(preset, notebook, namespace)
                         if namespace is not None and preset in presets.PRESETS and preset != "smoke" else {})
        if self.modified:
            import warnings
            warnings.warn(
                f"preset {preset!r} is set, but {', '.join(self.modified)} differ from the values robustlib.presets "
                f"gives {notebook} at that preset, so the record is marked as modified. For the preset's own run, "
                f"run `globals().update(robustlib.presets.parameters({preset!r}, {notebook!r}))` after the "
                f"parameters cell, or `python -m robustlib reproduce --preset {preset} --only {notebook}`.",
                stacklevel=2)
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.runs: list[dict] = []

    def add(self, **row) -> dict:
        self.rows.append(row)
        self._write(status="running")
        return row

    def claim(self, claim_id: str, measured, **setting) -> dict:
        """Record a measured value of one of the papers' headline claims (:mod:`robustlib.claims`);
        ``setting`` says where ours differs (dataset, network, epochs, …)."""
        from .claims import claim_row
        return self.add(**claim_row(claim_id, measured, **setting))

    def fit(self, name: str, model, data, objective, **kwargs):
        """:func:`robustlib.train.fit` as a keyed, resumable run under ``<results_dir>/runs/`` (see
        :mod:`robustlib.runs`); the record keeps each run's original training wall-clock."""
        from .runs import fit_run
        history, info = fit_run(self.path.parent / "runs", name, model, data, objective, **kwargs)
        self.runs.append(info)
        self._write(status="running")
        return history

    @property
    def train_wall_s(self) -> float:
        """Training wall-clock of the runs used, as they took originally (reloaded runs included); a run
        that several cells use (same name and key) counts once."""
        return float(sum({(r["name"], r["key"]): r["train_wall_s"] for r in self.runs}.values()))

    def frame(self):
        import pandas as pd
        return pd.DataFrame(self.rows)

    @property
    def precision(self) -> str | None:
        """What the runs used trained in ("bf16 + channels-last", "fp32", or several joined by " / "); None without
        runs."""
        found = sorted({r["precision"] for r in self.runs if r.get("precision")})
        return " / ".join(found) or None

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._t0

    @property
    def reused_from(self) -> list:
        """The devices other than this record's that trained epochs of the runs used (runs reused from another
        machine's checkpoints: their wall-clock is that machine's)."""
        return sorted({d for r in self.runs for d in r.get("devices", ())} - {self.device})

    def to_dict(self) -> dict:
        return {"notebook": self.notebook, "preset": self.preset, "device": self.device,
                "precision": self.precision, "versions": versions(), "started": self.started,
                "wall_s": round(self.wall_s, 2),
                "config": self.config, "rows": self.rows, "runs": self.runs,
                "train_wall_s": round(self.train_wall_s, 2),
                **({"runs_reused_from": self.reused_from} if self.reused_from else {}),
                **({"modified_from_preset": self.modified} if self.modified else {})}

    def save(self) -> Path:
        """Write the finished record (no status: :func:`run` marks it ``"ok"`` once the notebook has ended)."""
        return self._write()

    def _write(self, **extra) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**self.to_dict(), **extra}, indent=1, default=_jsonable))
        os.replace(tmp, self.path)
        return self.path

    def caption(self) -> str:
        """One line for figures and tables: which preset, device and wall-clock made these numbers (the training and
        notebook wall-clock up to the figure; the record and the page's banner give the chapter's totals)."""
        scale = "SMOKE-SCALE, not a reproduction" if self.preset == "smoke" else f"preset {self.preset}"
        if self.modified:
            scale += f" (modified: {', '.join(self.modified)})"
        train = f"training {self.train_wall_s:.0f} s ({self.precision}" if self.runs else ""
        if train:
            reused = f"; partly on {' and '.join(self.reused_from)}, reused runs" if self.reused_from else ""
            train += reused + "), "
        # a caption is written when its figure is drawn: the totals are those of the chapter up to that point
        return f"{scale} · {self.device} · up to here: {train}notebook wall-clock {self.wall_s:.0f} s"


def _notebook_namespace() -> dict | None:
    """The variables of the notebook running this code (IPython's user namespace); None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebook stack
        return None
    shell = get_ipython()
    return getattr(shell, "user_ns", None) if shell is not None else None


def _jsonable(value):
    try:
        import torch
        if isinstance(value, torch.Tensor):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def load_record(path) -> dict:
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------- the book's notebooks

def toc_notebooks(root: Path = ROOT) -> list[str]:
    """The notebooks of ``_toc.yml`` in reading order, as stems of ``notebooks/*.ipynb``."""
    import yaml
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(toc)
    out = []
    for f in files:
        p = Path(f)
        if p.parts[:1] == ("notebooks",) and (root / p.with_suffix(".ipynb")).exists():
            out.append(p.stem)
    return out


def run(preset: str = "smoke", only=None, root: Path = ROOT, results: Path | None = None,
        timeout: int | None = None, log=print, dry_run: bool = False) -> dict:
    """Execute the notebooks at ``preset``; return ``{name: None | error text}``. ``dry_run``: the preset's code
    paths on the embedded digits with every size capped (:func:`robustlib.presets.dry_run`), labelled as the smoke
    pipeline check they are (their records say ``dry_run_of``), into ``results`` — never ``results/<preset>``."""
    import papermill as pm

    preset = presets.resolve(preset)
    if dry_run and results is None:
        raise ValueError("a dry run needs its own results folder (results=...): it must never overwrite "
                         f"results/{preset}")
    if dry_run and Path(results).resolve() in {(root / "results" / p).resolve() for p in presets.PRESETS}:
        raise ValueError(f"a dry run's records are not results: give it a folder outside {root / 'results'}")
    if preset in ("gpu", "paper") and presets.PRESETS[preset] and not dry_run:
        import torch
        if not torch.cuda.is_available():
            log(f"[reproduce] warning: preset {preset} is sized for a GPU and none is visible; on this CPU it "
                f"will take many hours (use --preset smoke, or run on a GPU / Colab)")
    names = toc_notebooks(root)
    if only is not None:
        if isinstance(only, str) or not list(only):
            raise ValueError(f"only must be a non-empty list of notebook names, got {only!r}; the book's notebooks "
                             f"are: {', '.join(names)}")
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"unknown notebook(s) {unknown}; the book's notebooks are: {', '.join(names)}")
        names = [n for n in names if n in only]
    out_dir = Path(results) if results is not None else root / "results" / preset
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, str | None] = {}
    env_progress = os.environ.get("ROBUSTLIB_PROGRESS")
    os.environ["ROBUSTLIB_PROGRESS"] = "off"  # no widget bars frozen into the published pages
    try:
        for name in names:
            src = root / "notebooks" / f"{name}.ipynb"
            rel = os.path.relpath(out_dir.resolve(), src.parent.resolve())  # no machine paths in the book
            params = ({**presets.dry_run(preset, name), "preset": "smoke"} if dry_run
                      else {**presets.parameters(preset, name), "preset": preset})
            params["results_dir"] = rel
            log(f"[reproduce] {name} (preset {preset}{', dry run on the digits' if dry_run else ''}) …")
            record = out_dir / f"{name}.json"
            record.unlink(missing_ok=True)   # every run writes its own record: a stale one never passes for it
            t0 = time.perf_counter()
            try:
                pm.execute_notebook(str(src), str(out_dir / f"{name}.ipynb"), parameters=params,
                                    cwd=str(src.parent), kernel_name="python3", progress_bar=False,
                                    execution_timeout=timeout)
                if not record.exists() or load_record(record).get("status") == "running":
                    raise RuntimeError(f"{name} ran but wrote no results record {record} (rec.save() at its end)")
                _mark(record, name, preset, "ok", dry_run_of=preset if dry_run else None)
                outcome[name] = None
                log(f"[reproduce] {name}: ok in {time.perf_counter() - t0:.0f} s")
            except KeyboardInterrupt:   # a budget's SIGINT (scripts/run_offline.sh) or Ctrl-C: keep what was measured
                _mark(record, name, preset, "interrupted",
                      f"interrupted after {time.perf_counter() - t0:.0f} s; the rows measured until then are kept")
                log(f"[reproduce] {name}: INTERRUPTED after {time.perf_counter() - t0:.0f} s")
                raise
            except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
                outcome[name] = failure_cause(e)
                _mark(record, name, preset, "failed", outcome[name])
                log(f"[reproduce] {name}: FAILED after {time.perf_counter() - t0:.0f} s: {outcome[name]}")
                log("".join(traceback.format_exception_only(type(e), e))[-2000:])
    finally:
        if env_progress is None:
            os.environ.pop("ROBUSTLIB_PROGRESS", None)
        else:
            os.environ["ROBUSTLIB_PROGRESS"] = env_progress
    return outcome


def failure_cause(exc: BaseException) -> str:
    """One line naming what went wrong: the notebook's own exception for a failed cell."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}" if evalue else str(ename)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else repr(exc)}"


def _mark(path: Path, notebook: str, preset: str, status: str, error: str | None = None,
          dry_run_of: str | None = None) -> None:
    """Write the run's outcome into its record (a failed run without a record gets a minimal one)."""
    rec = load_record(path) if path.exists() else {"notebook": notebook, "preset": preset, "rows": []}
    rec["status"] = status
    if dry_run_of is not None:
        rec["dry_run_of"] = dry_run_of
    if error is not None:
        rec["error"] = error
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=_jsonable))
    os.replace(tmp, path)


def preference(preset: str) -> list[str]:
    """The presets a build tries per chapter, in order: ``best`` (paper, gpu, cpu, smoke), a comma list such as
    ``gpu,smoke``, or one preset (``auto`` resolved)."""
    if preset == "best":
        return list(book.BEST)
    return [presets.resolve(p.strip()) for p in preset.split(",") if p.strip()]


def stage(prefer: list[str], root: Path = ROOT, log=print, results=None, out: Path | None = None) -> Path:
    """Stage the book's sources in ``<out>/_build/source`` (``out`` defaults to ``root``): its pages, and per
    notebook of ``_toc.yml`` the executed copy of the first preset of ``prefer`` that ran it successfully (see
    :func:`robustlib.book.choose`), labelled with its preset and with the papermill and Colab cells hidden; then
    the generated pages ("Reproduction at a glance" and the snippets of the introduction and the outlook).
    ``results`` is the results root (default ``<root>/results``) or a mapping ``{preset: folder}``."""
    import nbformat

    prefer = list(prefer)
    src = Path(out if out is not None else root) / "_build" / "source"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copy2(root / "_config.yml", src / "_config.yml")
    shutil.copytree(root / "book", src / "book", ignore=shutil.ignore_patterns(book.GENERATED, "glance.md",
                                                                                 "performance.md"))
    (src / "notebooks").mkdir()
    names = toc_notebooks(root)
    dirs = book.results_dirs(prefer, results if results is not None else root / "results")
    chosen = book.choose(names, dirs)
    missing = [n for n, ex in chosen.items() if ex is None]
    if missing:
        raise FileNotFoundError(f"no executed copy of {missing} for preset(s) {prefer}: run "
                                f"`python -m robustlib reproduce --preset {prefer[0]}` first")
    sections = {}
    for name, ex in chosen.items():
        source = root / "notebooks" / f"{name}.ipynb"
        others = book.also_run(name, dirs, ex)
        current = tuple(o.preset for o in others if book.is_current(source, o))
        nbformat.write(book.prepare_notebook(source, ex, also=tuple(o.preset for o in others), current=current),
                       src / "notebooks" / f"{name}.ipynb")
        for o in others:   # a better preset never hides what a cheaper one measured
            stem = book.section_stem(name, o.preset)
            nbformat.write(book.prepare_notebook(source, o, main=ex), src / "notebooks" / f"{stem}.ipynb")
            sections.setdefault(f"notebooks/{name}", []).append(f"notebooks/{stem}")
        log(f"[build] {name}: executed at preset {ex.preset}" + ("" if ex.ok else " (FAILED run: its error shows)")
            + "".join(f"; also at {o.preset} (a section page)" for o in others))
    (src / "_toc.yml").write_text(book.toc_with_sections((root / "_toc.yml").read_text(), sections))
    glance.write_generated(src / "book", chosen, dirs, names)
    performance.write_page(src / "book", root / "benchmarks" / "results", book.GENERATED)
    return src


def build(prefer: list[str], root: Path = ROOT, log=print, results=None, out: Path | None = None,
          strict: bool = False) -> Path:
    """Render the book from executed notebooks into ``<out>/_build/html``; return the path of ``index.html``.
    ``strict`` turns Sphinx warnings into errors (``jupyter-book build -W --keep-going``)."""
    out = Path(out if out is not None else root)
    src = stage(prefer, root, log, results=results, out=out)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(src), "--path-output", str(out)]
    if strict:
        cmd += ["-W", "--keep-going"]
    env = dict(os.environ)   # the API page imports robustlib (autodoc), installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    subprocess.run(cmd, check=True, env=env)
    book.retarget_launch_buttons(out / "_build" / "html", (src / "_toc.yml").read_text())
    index = out / "_build" / "html" / "index.html"
    if not index.exists():
        raise RuntimeError(f"jupyter-book finished but {index} is missing")
    return index


def without_results(root: Path = ROOT, results=None, presets_=("paper", "gpu", "cpu")) -> list[str]:
    """The book's notebooks with no successful executed copy at any of ``presets_`` (what ``book --preset best``
    executes at smoke)."""
    dirs = book.results_dirs(list(presets_), results if results is not None else root / "results")
    return [n for n, ex in book.choose(toc_notebooks(root), dirs).items() if ex is None or not ex.ok]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustlib", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("reproduce", "execute the notebooks at a preset"),
                        ("build", "render the book from executed notebooks"),
                        ("book", "reproduce, then build")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--preset", default="auto",
                       help="smoke | cpu | gpu | paper | auto (gpu with CUDA, else smoke); for build, a comma "
                            "list tried in order per notebook (e.g. gpu,smoke) or best (paper, gpu, cpu, smoke); "
                            "book --preset best executes at smoke only the chapters without paper/gpu/cpu results")
        p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
        if name != "build":
            p.add_argument("--only", nargs="+", metavar="NAME", help="notebook names (file stems) to run")
            p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
        if name == "reproduce":
            p.add_argument("--dry-run", metavar="DIR", type=Path, default=None,
                           help="check the preset's code paths (its networks, grids, sections) on the embedded "
                                "digits with every size capped, writing to DIR (never results/): a gpu or paper "
                                "preset checked on a CPU before GPU time is spent on it")
        if name != "reproduce":
            p.add_argument("--strict", action="store_true", help="Sphinx warnings are errors (-W)")
    args = parser.parse_args(argv)
    if args.command == "reproduce" and args.preset == "best":
        parser.error("--preset best picks among executed results: use it with build or book")

    status = 0
    if args.command in ("reproduce", "book"):
        if args.preset == "best":
            names = without_results(args.root)
            if args.only:
                names = [n for n in names if n in args.only]
            preset, prefer = "smoke", preference("best")
            print(f"[book] chapters without paper/gpu/cpu results, executed at smoke: {', '.join(names) or 'none'}")
        else:
            preset = presets.resolve(args.preset)
            names, prefer = args.only, [preset]
        outcome = {}
        if names is None or names:
            t0 = time.perf_counter()
            dry = getattr(args, "dry_run", None)
            outcome = run(preset, only=names, root=args.root, timeout=args.timeout, results=dry,
                          dry_run=dry is not None)
            failed = {k: v for k, v in outcome.items() if v is not None}
            print(f"[reproduce] {len(outcome) - len(failed)}/{len(outcome)} notebooks ok at preset {preset}"
                  f"{' (dry run)' if dry is not None else ''} in {time.perf_counter() - t0:.0f} s; records in "
                  f"{dry if dry is not None else args.root / 'results' / preset}")
            for k, v in failed.items():
                print(f"[reproduce] FAILED {k}: {v}")
            status = 1 if failed else 0
    else:
        prefer = preference(args.preset)
    if args.command in ("build", "book"):  # a failed notebook still renders, with its error shown
        t0 = time.perf_counter()
        index = build(prefer, root=args.root, strict=args.strict)
        print(f"[build] the book is at {index} ({time.perf_counter() - t0:.0f} s)")
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
