"""How the book build stages its chapters: the per-chapter preset choice, the staged copies and their labels.

``python -m robustlib build`` (:func:`robustlib.reproduce.stage`) calls this module to

* pick, per chapter, the best preset that has an executed copy (:func:`choose`: ``paper``, then ``gpu``, then
  ``cpu``, then ``smoke`` for ``--preset best``; a record marked ``ok`` beats a failed one);
* prepare the staged copy of each chapter (:func:`prepare_notebook`): the current markdown of the source
  notebook (learning goals, exercises) around the executed code cells, papermill's injected-parameters cell and the
  Colab install cell tagged ``remove-cell`` (kept in the notebooks, hidden in the HTML), and an admonition under the
  title that says which preset, device and wall-clock made the page — a smoke page says "pipeline check, not a
  reproduction";
* stage, beside the chosen copy, every other successful real-data run of the chapter (say the ``cpu`` run of a
  chapter rendered from ``gpu``) as a section page of its own (:func:`also_run`, :func:`toc_with_sections`): a
  better preset never hides what a cheaper one measured;
* leave the pages generated from the records ("Reproduction at a glance", the snippets of the introduction and
  the outlook) to :mod:`robustlib.glance`, and render docstrings that are not clean reStructuredText verbatim on
  the API page (a Sphinx extension, :func:`setup`).

Nothing here is typed by hand: every number comes from a results record ``<results>/<preset>/<chapter>.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import presets

BEST = ("paper", "gpu", "cpu", "smoke")   # ``--preset best``: the strongest evidence first
GENERATED = "_generated"                   # folder of generated snippets inside the staged book/
HIDE = "remove-cell"                       # the jupyter-book tag that drops a cell from the HTML
VERDICT_BADGE = {"reproduced": "success", "partly": "warning", "not reproduced": "danger",
                 "not yet run": "muted", "pipeline check only": "info"}


@dataclass
class Executed:
    """One chapter's executed copy at one preset, with its results record (``None`` when it wrote none)."""
    name: str
    preset: str
    notebook: Path
    record: dict | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return bool(self.record) and self.record.get("status", "ok") == "ok" and not self.misfiled

    @property
    def misfiled(self) -> bool:
        """A record in this preset's folder that another preset made (a hand-run notebook pointed at the folder, a
        dry run): its numbers are never shown as this preset's."""
        rec = self.record or {}
        return rec.get("preset", self.preset) != self.preset or rec.get("dry_run_of") is not None

    @property
    def failure(self) -> str:
        """Why this copy is not shown as a result, in one line."""
        rec = self.record or {}
        if not rec:
            return "no results record was written"
        if self.misfiled:
            made = rec.get("preset") + (f", a dry run of {rec['dry_run_of']}" if rec.get("dry_run_of") else "")
            return f"its record was made at preset {made}, not {self.preset}"
        if rec.get("status") == "running":
            return ("it was cut short while running (no end was recorded: a killed process or an ended session); "
                    "the rows measured until then are kept in its record")
        return str(rec.get("error", "no cause was recorded"))


def results_dirs(prefer, results) -> dict:
    """``{preset: folder}`` in preference order; ``results`` is a results root holding ``<preset>/`` folders, or
    a mapping ``{preset: folder}`` (e.g. a smoke execution in a temporary folder)."""
    if isinstance(results, dict):
        return {p: Path(results[p]) for p in prefer if p in results}
    return {p: Path(results) / p for p in prefer}


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def executed(name: str, dirs: dict) -> list:
    """Every executed copy of chapter ``name`` among ``dirs``, in preference order."""
    out = []
    for preset, d in dirs.items():
        nb = d / f"{name}.ipynb"
        if nb.exists():
            out.append(Executed(name, preset, nb, read_record(d / f"{name}.json")))
    return out


def choose(names, dirs: dict) -> dict:
    """Per chapter the first preset whose run succeeded; else the first executed copy (its error shows on the
    page); ``None`` where no preset has an executed copy."""
    chosen = {}
    for name in names:
        found = executed(name, dirs)
        chosen[name] = next((e for e in found if e.ok), found[0] if found else None)
    return chosen


def also_run(name: str, dirs: dict, chosen: Executed | None) -> list:
    """The other successful executed copies of chapter ``name`` at real-data presets (not ``smoke``), in preference
    order: the book renders each as a section page under the chosen one."""
    if chosen is None:
        return []
    return [e for e in executed(name, dirs) if e.ok and e.preset not in ("smoke", chosen.preset)]


def section_stem(name: str, preset: str) -> str:
    """File stem of the staged page of chapter ``name`` at a preset other than the chosen one."""
    return f"{name}-{preset}"


def _toc_entries(node):
    """Every mapping of a parsed ``_toc.yml`` (parts, chapters, sections), depth first."""
    if isinstance(node, dict):
        yield node
        for v in list(node.values()):
            yield from _toc_entries(v)
    elif isinstance(node, list):
        for v in node:
            yield from _toc_entries(v)


def toc_with_sections(toc_text: str, sections: dict) -> str:
    """``_toc.yml``'s text with ``sections`` (``{"notebooks/<name>": ["notebooks/<name>-cpu", …]}``) added under
    the chapters that have them (comments are not kept: this is the staged copy)."""
    import yaml
    toc = yaml.safe_load(toc_text)
    for entry in list(_toc_entries(toc)):
        extra = sections.get(entry.get("file"))
        if extra:
            entry.setdefault("sections", []).extend({"file": f} for f in extra)
    return yaml.safe_dump(toc, sort_keys=False)


def section_parents(toc_text: str) -> dict:
    """``{section file: chapter file}`` for every section of a staged ``_toc.yml``."""
    import yaml
    return {sec["file"]: entry["file"] for entry in _toc_entries(yaml.safe_load(toc_text)) if "file" in entry
            for sec in entry.get("sections") or [] if isinstance(sec, dict) and "file" in sec}


def retarget_launch_buttons(html_dir: Path, toc_text: str) -> list:
    """Point the Colab launch button of each other-preset page (``notebooks/<name>-<preset>``, a staged file only)
    at its chapter's notebook, which exists in the repository; return the pages changed."""
    import re
    changed = []
    for section, chapter in section_parents(toc_text).items():
        page = Path(html_dir) / f"{section}.html"
        if not page.exists():
            continue
        text = page.read_text()
        new = re.sub(r"(colab\.research\.google\.com/github/[^\"'\s]*?/)" + re.escape(section) + r"\.ipynb",
                     lambda m: f"{m.group(1)}{chapter}.ipynb", text)
        if new != text:
            page.write_text(new)
            changed.append(section)
    return changed


# ---------------------------------------------------------------- the staged chapter

def _tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


def _hide(cell) -> None:
    tags = _tags(cell)
    if HIDE not in tags:
        cell.setdefault("metadata", {})["tags"] = tags + [HIDE]


def is_colab_install(cell) -> bool:
    """The first-cell installer of every chapter: installs robustlib on Colab, does nothing elsewhere."""
    return cell["cell_type"] == "code" and "%pip install" in cell["source"] and "robustlib" in cell["source"]


def fmt_seconds(seconds) -> str:
    if seconds is None:
        return "–"
    s = float(seconds)
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h")


def when(iso) -> str:
    """``2026-11-25T20:31:10+00:00`` → ``2026-11-25 20:31 UTC`` (as written by :class:`robustlib.reproduce.Record`)."""
    if not iso:
        return "(date unknown)"
    try:
        t = datetime.fromisoformat(str(iso)).astimezone(timezone.utc)
    except ValueError:
        return str(iso)
    return t.strftime("%Y-%m-%d %H:%M UTC")


def trained_in(record: dict) -> str:
    """"bf16 + channels-last training", "fp32 training"… as the record says its runs trained ('' if it does not),
    and the other machines whose runs it reused."""
    out = f"{record['precision']} training" if record.get("precision") else ""
    reused = record.get("runs_reused_from")
    return out + (f"{', partly' if out else 'training partly'} on {' and '.join(reused)} (reused runs)"
                  if reused else "")


def banner(ex: Executed, parameters: dict | None = None, refreshed: bool = True, main: Executed | None = None,
           also: tuple = (), current: tuple = ()) -> str:
    """The admonition under a chapter's title: preset, device, date and wall-clock of the run it shows. ``main``:
    this page is another preset's run of a chapter whose main page renders ``main``; ``also``: the presets of the
    chapter's other runs, each on a section page; ``current``: those of them whose code is today's (a stale page
    points to the first, which carries the chapter's current text)."""
    rec = ex.record or {}
    where = (f"Executed {when(rec.get('started'))} on {rec.get('device', '(device unknown)')}; "
             f"notebook wall-clock {fmt_seconds(rec.get('wall_s'))}")
    if rec.get("runs"):
        trained = trained_in(rec)
        where += (f", training {fmt_seconds(rec.get('train_wall_s'))} (as the runs originally took"
                  f"{'; ' + trained if trained else ''})")
    where += "."
    modified = rec.get("modified_from_preset") or {}
    if modified:
        diffs = ", ".join(f"`{k} = {_short(v.get('used'))}` (preset: `{_short(v.get('preset'))}`)"
                          for k, v in modified.items())
        where += (f" **A modified run:** its parameters differ from what the {ex.preset} preset gives this chapter "
                  f"({diffs}), so its numbers are not the preset's.")
    params = {k: v for k, v in (parameters or {}).items() if k not in ("results_dir", "preset")}
    shown = ", ".join(f"`{k} = {v!r}`" for k, v in params.items())
    stale = ("" if refreshed else "\n\nThe executed copy predates the current notebook's code: the text around the "
             "code is the executed version's."
             + (f" The chapter's current text is on the page of its {current[0]} run: "
                f"{{doc}}`/notebooks/{section_stem(ex.name, current[0])}`." if current else ""))
    what = presets.DESCRIPTIONS.get(ex.preset, ex.preset)
    if not ex.ok:
        cause = " ".join(ex.failure.replace("`", "'").split())
        return (f"```{{admonition}} This chapter failed at preset {ex.preset}\n:class: error\n"
                f"The run stopped with: {cause}. The page shows the output up to the failing cell. {where}{stale}\n```")
    if ex.preset == "smoke":
        return ("```{admonition} Pipeline check, not a reproduction\n:class: warning\n"
                f"This page was rendered from the **smoke** preset ({what}). Its numbers show that the code runs end "
                "to end; they say nothing about the papers' claims. " + where +
                " The real-data presets are described in the introduction." + stale + "\n```")
    others = "".join(f" The same chapter at preset {p}: {{doc}}`/notebooks/{section_stem(ex.name, p)}`."
                     for p in also)
    if main is not None:
        return (f"```{{admonition}} The same chapter at preset {ex.preset}\n:class: note\n"
                f"This page is the chapter {{doc}}`/notebooks/{ex.name}` executed at the **{ex.preset}** preset "
                f"({what}); the chapter's own page shows the {main.preset} run. Its numbers stand on their own and are "
                f"never mixed with the other run's. {where}"
                + (f" Parameters set by the preset: {shown}." if shown else "") + stale + "\n```")
    return (f"```{{admonition}} Rendered from preset {ex.preset}\n:class: note\n"
            f"The numbers on this page come from the **{ex.preset}** preset ({what}). {where}"
            + (f" Parameters set by the preset: {shown}." if shown else "") + others + stale + "\n```")


def _short(value, width: int = 40) -> str:
    """``repr(value)`` cut to ``width`` characters (a method grid is long), without backticks."""
    text = repr(value).replace("`", "'")
    return text if len(text) <= width else text[:width - 1] + "…"


def same_code(ran: list, code: list, injected: dict) -> bool:
    """Whether executed code cells ``ran`` are today's ``code`` (cell sources, in order): equal, except that the
    parameters cell may differ in comments and in defaults that the run overrode (its ``injected`` parameters): a
    smoke default changed since the run did not change what the run computed."""
    if len(ran) != len(code):
        return False
    for a, b in zip(ran, code):
        if a.source == b.source:
            continue
        if "parameters" not in _tags(b):
            return False
        old, new = presets.cell_defaults(a.source), presets.cell_defaults(b.source)
        if old is None or new is None or old.keys() != new.keys():
            return False
        if any(old[k] != new[k] and k not in injected for k in old):
            return False
    return True


def _ran_and_today(source: Path, ex: Executed):
    """The executed copy, today's notebook (the executed copy where there is no source), the run's code cells and
    today's, and the run's injected parameters."""
    import nbformat
    nb = nbformat.read(ex.notebook, as_version=4)
    src = nbformat.read(source, as_version=4) if Path(source).exists() else nb
    ran = [c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in _tags(c)]
    code = [c for c in src.cells if c.cell_type == "code"]
    return nb, src, ran, code, nb.metadata.get("papermill", {}).get("parameters", {})


def is_current(source: Path, ex: Executed) -> bool:
    """Whether the run ``ex`` executed today's code of the chapter notebook ``source`` (:func:`same_code`)."""
    _, _, ran, code, parameters = _ran_and_today(source, ex)
    return same_code(ran, code, parameters)


def prepare_notebook(source: Path, ex: Executed, main: Executed | None = None, also: tuple = (),
                     current: tuple = ()):
    """The staged copy of one chapter (an ``nbformat`` notebook) — see the module docstring. ``main``, ``also`` and
    ``current`` as for :func:`banner`; a page of another preset's run gets "(preset …)" after its title."""
    import nbformat
    nb, src, ran, code, parameters = _ran_and_today(source, ex)
    injected = [c for c in nb.cells if "injected-parameters" in _tags(c)]
    refreshed = same_code(ran, code, parameters)
    if refreshed:   # today's markdown around the executed code cells (their outputs)
        cells, it = [], iter(ran)
        for c in src.cells:
            if c.cell_type != "code":
                cells.append(c)
                continue
            cells.append(next(it))
            if "parameters" in _tags(c):
                cells.extend(injected)
                injected = []
        nb.cells = cells + injected
    for c in nb.cells:
        if "injected-parameters" in _tags(c) or is_colab_install(c):
            _hide(c)
    note = banner(ex, parameters, refreshed, main=main, also=also, current=current)
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    lines = first.source.split("\n") if first is not None else []
    at = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
    if at is None:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(note))
    else:
        if main is not None:
            lines[at] = f"{lines[at]} (preset {ex.preset})"
        first.source = "\n".join(lines[:at + 1] + ["", note, ""] + lines[at + 1:])
    return nb


# ---------------------------------------------------------------- the API page (a Sphinx extension)

def _rst_problems(text: str) -> list:
    """docutils' warnings and errors for ``text`` read as reStructuredText (Sphinx's roles and directives
    stood in for by plain ones, since they are not what is checked)."""
    import re

    from docutils.core import publish_doctree
    from docutils.utils import SystemMessage

    plain = re.sub(r":[\w:.+-]+:`", "`", text).replace(".. code-block::", ".. code::")
    plain = re.sub(r"^(\s*)\.\. (math|note|warning|seealso|versionadded|deprecated)::", r"\1.. note::", plain,
                   flags=re.M)
    messages = []
    try:
        tree = publish_doctree(plain, settings_overrides={"report_level": 5, "halt_level": 5,
                                                          "warning_stream": False})
    except SystemMessage as e:   # pragma: no cover - halt_level 5 never halts
        return [str(e)]
    for node in tree.traverse():
        if node.tagname == "system_message" and int(node.get("level", 0)) >= 2:
            messages.append(node.astext())
    return messages


def verbatim_docstrings(app, what, name, obj, options, lines) -> None:
    """``autodoc-process-docstring``: a docstring that is not clean reStructuredText (robustlib's docstrings write
    mathematics as plain text, ``|S|`` and aligned tables included) is shown verbatim instead of misrendered — the
    API page then builds without warnings and loses nothing."""
    if lines and _rst_problems("\n".join(lines)):
        lines[:] = [".. code-block:: none", ""] + [("    " + line) if line.strip() else "" for line in lines] + [""]


def setup(app):
    """Sphinx extension (``_config.yml``: ``sphinx.extra_extensions``) used by the API page."""
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-docstring", verbatim_docstrings, priority=900)   # after napoleon (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
