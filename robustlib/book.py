"""What the book build generates: the per-chapter preset choice and labels, and the pages made from results records.

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
* write the generated pages (:func:`write_generated`): ``book/glance.md`` ("Reproduction at a glance": one row per
  claim of :data:`robustlib.claims.CLAIMS`, from the best record that measured it, and a claimed-vs-measured
  figure), and the snippets that ``book/intro.md`` and ``book/outlook.md`` include from ``book/_generated/``.

Nothing here is typed by hand: every number comes from a results record ``<results>/<preset>/<chapter>.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import claims, presets

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
        return bool(self.record) and self.record.get("status", "ok") == "ok"


def results_dirs(prefer, results) -> dict:
    """``{preset: folder}`` in preference order; ``results`` is a results root holding ``<preset>/`` folders, or
    a mapping ``{preset: folder}`` (e.g. a smoke execution in a temporary folder)."""
    if isinstance(results, dict):
        return {p: Path(results[p]) for p in prefer if p in results}
    return {p: Path(results) / p for p in prefer}


def _read_record(path: Path) -> dict | None:
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
            out.append(Executed(name, preset, nb, _read_record(d / f"{name}.json")))
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


def toc_with_sections(toc_text: str, sections: dict) -> str:
    """``_toc.yml``'s text with ``sections`` (``{"notebooks/<name>": ["notebooks/<name>-cpu", …]}``) added under
    the chapters that have them (comments are not kept: this is the staged copy)."""
    import yaml
    toc = yaml.safe_load(toc_text)

    def walk(node):
        if isinstance(node, dict):
            extra = sections.get(node.get("file"))
            if extra:
                node.setdefault("sections", []).extend({"file": f} for f in extra)
            for v in list(node.values()):
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(toc)
    return yaml.safe_dump(toc, sort_keys=False)


def section_parents(toc_text: str) -> dict:
    """``{section file: chapter file}`` for every section of a staged ``_toc.yml``."""
    import yaml
    out = {}

    def walk(node):
        if isinstance(node, dict):
            for sec in node.get("sections") or []:
                if isinstance(sec, dict) and "file" in sec and "file" in node:
                    out[sec["file"]] = node["file"]
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(yaml.safe_load(toc_text))
    return out


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


def _fmt_s(seconds) -> str:
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


def banner(ex: Executed, parameters: dict | None = None, refreshed: bool = True, main: Executed | None = None,
           also: tuple = ()) -> str:
    """The admonition under a chapter's title: preset, device, date and wall-clock of the run it shows. ``main``:
    this page is another preset's run of a chapter whose main page renders ``main``; ``also``: the presets of the
    chapter's other runs, each on a section page."""
    rec = ex.record or {}
    where = (f"Executed {when(rec.get('started'))} on {rec.get('device', '(device unknown)')}; "
             f"notebook wall-clock {_fmt_s(rec.get('wall_s'))}")
    if rec.get("runs"):
        trained = _trained_in(rec)
        where += (f", training {_fmt_s(rec.get('train_wall_s'))} (as the runs originally took"
                  f"{'; ' + trained if trained else ''})")
    where += "."
    params = {k: v for k, v in (parameters or {}).items() if k not in ("results_dir", "preset")}
    shown = ", ".join(f"`{k} = {v!r}`" for k, v in params.items())
    stale = ("" if refreshed else "\n\nThe executed copy predates the current notebook's code: the text around the "
             "code is the executed version's.")
    what = presets.DESCRIPTIONS.get(ex.preset, ex.preset)
    if not ex.ok:
        cause = " ".join(str(rec.get("error", "no results record was written")).replace("`", "'").split())
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


def prepare_notebook(source: Path, ex: Executed, main: Executed | None = None, also: tuple = ()):
    """The staged copy of one chapter (an ``nbformat`` notebook) — see the module docstring. ``main`` and ``also``
    as for :func:`banner`; a page of another preset's run gets "(preset …)" after its title."""
    import nbformat
    nb = nbformat.read(ex.notebook, as_version=4)
    src = nbformat.read(source, as_version=4) if Path(source).exists() else nb
    injected = [c for c in nb.cells if "injected-parameters" in _tags(c)]
    ran = [c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in _tags(c)]
    code = [c for c in src.cells if c.cell_type == "code"]
    refreshed = [c.source for c in ran] == [c.source for c in code]
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
    parameters = nb.metadata.get("papermill", {}).get("parameters", {})
    note = banner(ex, parameters, refreshed, main=main, also=also)
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


# ---------------------------------------------------------------- generated pages

def _fmt(value, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "VRA":
        return f"{100 * float(value):.1f}%"
    if unit.startswith("×"):
        return f"{float(value):.2f}×"
    if unit == "images":   # a count of test images, e.g. violations only the interval attack found
        return f"{float(value):.0f} image{'s' if float(value) != 1 else ''}"
    return f"{float(value):.3g} {unit}"


def claimed_text(claim: dict) -> str:
    c, unit = claim["claimed"], claim["unit"]
    if claim["rule"] == "range":
        return f"{c[0]:g}–{c[1]:g}× ({unit.lstrip('× ')})" if unit.startswith("×") else f"{c[0]:g}–{c[1]:g} {unit}"
    if claim["rule"] == "positive":
        return f"at least 1 {unit.rstrip('s')}"
    return "up to " + (f"{c:g}×" if unit.startswith("×") else _fmt(c, unit))


def records(dirs: dict, names) -> list:
    """Every successful results record among ``dirs``, as ``Executed``, in preference then reading order."""
    return [e for p in dirs for e in executed_records(dirs[p], p, names)]


def executed_records(folder: Path, preset: str, names) -> list:
    out = []
    for name in names:
        rec = _read_record(folder / f"{name}.json")
        if rec and rec.get("status", "ok") == "ok":
            out.append(Executed(name, preset, folder / f"{name}.ipynb", rec))
    return out


def glance_rows(dirs: dict, names) -> list:
    """One dict per claim: the measured row of the best record that has one (the last such row of that record),
    or ``None`` fields and verdict "not yet run"."""
    recs = records(dirs, names)
    out = []
    for cid, claim in claims.CLAIMS.items():
        hit = None
        for ex in recs:
            rows = [r for r in ex.record.get("rows", []) if r.get("section") == "claim" and r.get("claim") == cid]
            if rows:
                hit = (ex, rows[-1], len(rows))
                break
        row = dict(id=cid, paper=claim["paper"], text=claim["text"], claimed=claimed_text(claim), measured=None,
                   value=None, dataset=None, network=None, preset=None, device=None, wall_s=None, train_wall_s=None,
                   chapter=None, others=0, verdict="not yet run")
        if hit:
            ex, r, n = hit
            cfg = ex.record.get("config", {})
            row.update(value=r.get("measured"), measured=_fmt(r.get("measured"), claim["unit"]),
                       dataset=r.get("dataset") or cfg.get("dataset") or ", ".join(cfg.get("datasets", [])) or None,
                       network=r.get("network") or r.get("model") or cfg.get("model"), preset=ex.preset,
                       device=", ".join(x for x in (ex.record.get("device"), _trained_in(ex.record)) if x),
                       wall_s=ex.record.get("wall_s"),
                       train_wall_s=ex.record.get("train_wall_s"), chapter=ex.name, others=n - 1,
                       note=r.get("note") or r.get("differs"),
                       verdict=claims.verdict(cid, r.get("measured"), ex.preset))
        out.append(row)
    return out


def _trained_in(record: dict) -> str:
    """"bf16 + channels-last training", "fp32 training"… as the record says its runs trained ('' if it does not)."""
    return f"{record['precision']} training" if record.get("precision") else ""


def _badge(verdict: str) -> str:
    return f"{{bdg-{VERDICT_BADGE[verdict]}}}`{verdict}`"


def _doc(name) -> str:
    return f"{{doc}}`/notebooks/{name}`" if name else "–"


def glance_table(rows) -> str:
    head = ("| claim | claimed | measured | verdict | where it was measured |\n"
            "| --- | --- | --- | --- | --- |\n")
    lines = []
    for r in rows:
        claim = f"{r['text']} (paper {r['paper']})"
        if r["preset"] is None:
            lines.append(f"| {claim} | {r['claimed']} | not yet run | {_badge(r['verdict'])} | – |")
            continue
        setting = " · ".join(str(x) for x in (r["dataset"], r["network"]) if x)
        clock = f"notebook {_fmt_s(r['wall_s'])}" + (f", training {_fmt_s(r['train_wall_s'])}"
                                                     if r["train_wall_s"] else "")
        more = f" (+{r['others']} more in the chapter)" if r["others"] else ""
        note = f"*{str(r['note']).replace('|', '/')}*" if r.get("note") else ""
        where = "; ".join(x for x in (_doc(r["chapter"]), setting, f"preset `{r['preset']}`", r["device"], clock, note)
                          if x)
        lines.append(f"| {claim} | {r['claimed']} | {r['measured']}{more} | {_badge(r['verdict'])} | {where} |")
    return head + "\n".join(lines) + "\n"


def glance_figure(rows, path: Path) -> Path:
    """Small multiples, one panel per claim: the claimed value (grey; a range as a bar from low to high) beside
    the measured one (coloured by verdict, labelled with its preset), or "not yet run"."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {"reproduced": "tab:green", "partly": "tab:orange", "not reproduced": "tab:red",
              "pipeline check only": "tab:blue", "not yet run": "lightgrey"}
    cols = 4
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(12, 2.4 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        c = claims.CLAIMS[r["id"]]
        scale = 100 if c["unit"] == "VRA" else 1
        lo, hi = (c["claimed"] if c["rule"] == "range" else (c["claimed"], c["claimed"]))
        claimed = dict(color="white", edgecolor="dimgrey", hatch="///")
        if c["rule"] == "range":   # the claimed interval, from its low to its high end
            ax.bar(0, (hi - lo) * scale, bottom=lo * scale, **claimed)
        else:
            ax.bar(0, hi * scale, **claimed)
        if c["rule"] == "positive":
            ax.text(0, hi * scale, "> 0", ha="center", va="bottom", fontsize=8)
        if r["value"] is None:
            ax.text(1, hi * scale / 2, "not yet\nrun", ha="center", va="center", fontsize=8, color="grey")
        else:
            v = float(r["value"]) * scale
            ax.bar(1, v, color=colour[r["verdict"]])
            ax.text(1, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks([0, 1], ["claimed", "measured" if r["value"] is None else f"measured\n({r['preset']})"],
                      fontsize=8)
        ax.set_xlim(-0.7, 1.7)
        ax.set_ylabel({"VRA": "VRA (%)", "points": "points"}.get(c["unit"], "speed-up (×)"), fontsize=8)
        ax.set_title(r["id"], fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.2)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="dimgrey", hatch="///")]
    handles += [plt.Rectangle((0, 0), 1, 1, color=v) for v in colour.values()]
    fig.legend(handles, ["claimed"] + [f"measured: {v}" for v in colour], loc="lower center", ncol=len(handles),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chapters_table(chosen: dict) -> str:
    """Which preset each chapter of this build was rendered from."""
    lines = ["| chapter | rendered from | device | executed | notebook wall-clock | status |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, ex in chosen.items():
        rec = (ex.record or {}) if ex else {}
        preset = f"`{ex.preset}`" + (" (pipeline check, not a reproduction)" if ex.preset == "smoke" else "")
        lines.append(f"| {_doc(name)} | {preset} | {rec.get('device', '–')} | {when(rec.get('started'))} | "
                     f"{_fmt_s(rec.get('wall_s'))} | {'ok' if ex.ok else 'failed: ' + str(rec.get('error', ''))} |")
    return "\n".join(lines) + "\n"


def _rows_table(rows, skip=("section",)) -> str:
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in skip][:9]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return "–" if v is None else str(v).replace("|", "/")
    return ("| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys) + "\n" +
            "\n".join("| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows) + "\n")


IDEAS = {
    "pruned-certified": dict(title="Pruning the data of certified training",
                             claims=("p1-speedup-cifar10", "p1-speedup-cifar100", "p2-vs-verifiable", "p2-vra"),
                             match=lambda r: r.get("idea") == "pruned-certified" and r.get("section") == "outlook"),
    "worst-ibp": dict(title="Importance-sampled MixTrain (`sampling=\"worst-ibp\"` and `\"ibp-weighted\"`)",
                      claims=("p2-vra", "p2-vs-verifiable", "p2-vs-at"),
                      match=lambda r: r.get("idea") == "worst-ibp" or r.get("section") == "sampling"),
}


def outlook_snippet(dirs: dict, names, glance: list) -> str:
    """The measured evidence of the closing chapter: per idea, what we measured of its ingredients (claim rows)
    and of the combination itself (rows with ``section="outlook", idea=…``, or the rows of MixTrain's ``sampling``
    section; the chapters' seed repeats of these runs stay on their pages), each with preset, device and
    wall-clock; "not yet run" where nothing was measured."""
    recs = records(dirs, names)
    by_id = {r["id"]: r for r in glance}
    out = []
    for key, idea in IDEAS.items():
        out.append(f"### {idea['title']}\n")
        ingredients = [by_id[c] for c in idea["claims"]]
        out.append("What we have measured of its ingredients (from {doc}`glance`):\n")
        out.append("| claim | measured | preset · device | verdict |\n| --- | --- | --- | --- |\n" + "\n".join(
            f"| {r['text']} | {r['measured'] or 'not yet run'} | "
            + (f"`{r['preset']}` · {r['device']}" if r["preset"] else "–") + f" | {_badge(r['verdict'])} |"
            for r in ingredients) + "\n")
        found = []
        for ex in recs:
            rows = [r for r in ex.record.get("rows", []) if idea["match"](r)]
            if rows and not any(f[0].name == ex.name for f in found):   # best preset of each chapter only
                found.append((ex, rows))
        if not found:
            out.append(f"The combination itself: **not yet run** — no results record has rows for it (a chapter "
                       f"that measures it writes rows with `section=\"outlook\", idea=\"{key}\"`).\n")
        for ex, rows in found:
            rec = ex.record
            scale = " — smoke scale: a pipeline check, not evidence" if ex.preset == "smoke" else ""
            out.append(f"The combination itself, measured in {_doc(ex.name)} at preset `{ex.preset}` on "
                       f"{rec.get('device')} (notebook wall-clock {_fmt_s(rec.get('wall_s'))}){scale}:\n")
            out.append(_rows_table(rows))
    return "\n".join(out)


def write_generated(book_dir: Path, chosen: dict, dirs: dict, names) -> dict:
    """Write ``glance.md``, ``_generated/glance.png``, ``_generated/chapters.md`` and ``_generated/outlook.md``
    into the staged ``book_dir``; return the glance rows."""
    gen = Path(book_dir) / GENERATED
    gen.mkdir(parents=True, exist_ok=True)
    rows = glance_rows(dirs, names)
    glance_figure(rows, gen / "glance.png")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    used = sorted({(r["chapter"], r["preset"]) for r in rows if r["chapter"]})
    counts = {v: sum(r["verdict"] == v for r in rows) for v in claims.VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    sources = ("; ".join(f"{_doc(c)} at `{p}`" for c, p in used)) or "none yet"
    (gen / "chapters.md").write_text(chapters_table(chosen))
    (gen / "outlook.md").write_text(outlook_snippet(dirs, names, rows))
    (Path(book_dir) / "glance.md").write_text(f"""# Reproduction at a glance

Every headline claim of the two papers {{cite}}`li2023less,wang2018mixtrain`, beside the value we measured. This page
is **generated when the book is built** (`robustlib.book`, {when}) from the results records the chapters write —
nothing on it is typed by hand. For each claim it takes the best record that measured it (preset `paper`, then
`gpu`, then `cpu`, then `smoke`); a claim that no record measures reads "not yet run". Verdicts follow
`robustlib.claims.verdict`; a smoke-scale value is only ever a *pipeline check*, whatever it is.

**Summary:** {summary}. Records used: {sources}.

{glance_table(rows)}
```{{figure}} {GENERATED}/glance.png
:name: fig-glance
:alt: One panel per claim: the claimed value beside our measured one, coloured by verdict.

Claimed (hatched; the claimed range of "5–10×" as a bar from 5 to 10) against measured (coloured by verdict,
labelled with its preset) for each claim; a panel without a measured bar reads "not yet run". Preset, device and wall-clock of each measured value are in the
table above.
```

## Which preset each chapter was rendered from

{chapters_table(chosen)}
## How to read a verdict

- **reproduced** — within the claim's tolerance at a real-data preset; for "up to X" claims, at least
  (1 − tol)·X; for the "5–10×" range, inside it.
- **partly** — short of the claim but within the partial factor recorded in `robustlib.claims`.
- **not reproduced** — measured at a real-data preset and further off than that.
- **pipeline check only** — measured at the smoke preset (the embedded 8×8 digits): the code path runs, and that
  is all it shows.
- **not yet run** — no results record measures this claim yet.

Our settings differ from the papers' (datasets, networks, schedules; the papers' full texts, tables and hardware
were not available to us): each chapter says how, and a verdict applies to our setting, not to the paper's.
""")
    return {"rows": rows, "chosen": chosen}


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
