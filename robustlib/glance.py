"""The book's pages generated from the results records at every build (:func:`write_generated`).

* ``book/glance.md``, "Reproduction at a glance": one row per claim of :data:`robustlib.claims.CLAIMS`, from the best
  record that measured it (:func:`glance_rows`), and a claimed-vs-measured figure (:func:`glance_figure`);
* the snippets that ``book/intro.md`` and ``book/outlook.md`` include from ``book/_generated/``: which preset each
  chapter was rendered from (:func:`chapters_table`) and the outlook's measured rows (:func:`outlook_snippet`).

Nothing here is typed by hand: every number comes from a results record ``<results>/<preset>/<chapter>.json``; the
choice of records and the staged chapters are :mod:`robustlib.book`'s.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from . import claims
from .book import (GENERATED, VERDICT_BADGE, Executed, also_run, fmt_seconds, read_record, section_stem,
                   trained_in, when)

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
        ex = Executed(name, preset, folder / f"{name}.ipynb", read_record(folder / f"{name}.json"))
        if ex.ok:
            out.append(ex)
    return out


def _page(name, preset, chosen: dict | None = None) -> str:
    """The page that shows chapter ``name``'s run at ``preset``: the chapter's own page when the build rendered it
    from that preset, else its section page for that preset."""
    if not name:
        return "–"
    main = (chosen or {}).get(name)
    own = main is None or main.preset == preset or preset == "smoke"   # smoke runs get no section page
    return _doc(name if own else section_stem(name, preset))


def _modified(names) -> str:
    """" (modified: a, b)" for the parameters a run set by hand, "" for none."""
    return f" (modified: {', '.join(names)})" if names else ""


def glance_rows(dirs: dict, names, chosen: dict | None = None) -> list:
    """One dict per claim: the measured row of the best record that has one (the last such row of that record),
    or ``None`` fields and verdict "not yet run". ``chosen``: the build's page per chapter, to link the page that
    shows the record (a section page where the chapter's page renders another preset)."""
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
                       device=", ".join(x for x in (ex.record.get("device"), trained_in(ex.record)) if x),
                       wall_s=ex.record.get("wall_s"),
                       train_wall_s=ex.record.get("train_wall_s"), chapter=ex.name, others=n - 1,
                       page=_page(ex.name, ex.preset, chosen),
                       note=r.get("note") or r.get("differs"),
                       modified=sorted(ex.record.get("modified_from_preset") or {}),
                       verdict=claims.verdict(cid, r.get("measured"), ex.preset))
        out.append(row)
    return out


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
        clock = f"notebook {fmt_seconds(r['wall_s'])}" + (f", training {fmt_seconds(r['train_wall_s'])}"
                                                     if r["train_wall_s"] else "")
        more = f" (+{r['others']} more in the chapter)" if r["others"] else ""
        note = f"*{str(r['note']).replace('|', '/')}*" if r.get("note") else ""
        preset = f"preset `{r['preset']}`" + _modified(r.get("modified"))
        page = r.get("page") or _doc(r["chapter"])
        where = "; ".join(x for x in (page, setting, preset, r["device"], clock, note) if x)
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


def chapters_table(chosen: dict, dirs: dict | None = None) -> str:
    """Which preset each chapter of this build was rendered from, and (with ``dirs``) its other real-data runs, each
    on a section page of its own."""
    lines = ["| chapter | rendered from | device | executed | notebook wall-clock | status | also run at |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, ex in chosen.items():
        rec = (ex.record or {}) if ex else {}
        preset = f"`{ex.preset}`" + (" (pipeline check, not a reproduction)" if ex.preset == "smoke" else "")
        others = also_run(name, dirs, ex) if dirs else []
        also = ", ".join(f"{{doc}}`{o.preset} </notebooks/{section_stem(name, o.preset)}>`" for o in others) or "–"
        status = "ok" if ex.ok else "failed: " + ex.failure.replace("|", "/")
        lines.append(f"| {_doc(name)} | {preset} | {rec.get('device', '–')} | {when(rec.get('started'))} | "
                     f"{fmt_seconds(rec.get('wall_s'))} | {status} | {also} |")
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


def outlook_snippet(dirs: dict, names, glance: list, chosen: dict | None = None) -> str:
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
            + (f"`{r['preset']}`{_modified(r.get('modified'))} · {r['device']}" if r["preset"] else "–") + f" | {_badge(r['verdict'])} |"
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
            out.append(f"The combination itself, measured in {_page(ex.name, ex.preset, chosen)} at preset "
                       f"`{ex.preset}`{_modified(sorted(rec.get('modified_from_preset') or {}))} on "
                       f"{rec.get('device')} (notebook wall-clock {fmt_seconds(rec.get('wall_s'))}){scale}:\n")
            out.append(_rows_table(rows))
    return "\n".join(out)


def write_generated(book_dir: Path, chosen: dict, dirs: dict, names) -> dict:
    """Write ``glance.md``, ``_generated/glance.png``, ``_generated/chapters.md`` and ``_generated/outlook.md``
    into the staged ``book_dir``; return the glance rows."""
    gen = Path(book_dir) / GENERATED
    gen.mkdir(parents=True, exist_ok=True)
    rows = glance_rows(dirs, names, chosen)
    glance_figure(rows, gen / "glance.png")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    used = sorted({(r["chapter"], r["preset"]) for r in rows if r["chapter"]})
    counts = {v: sum(r["verdict"] == v for r in rows) for v in claims.VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    sources = ("; ".join(f"{_page(c, p, chosen)} at `{p}`" for c, p in used)) or "none yet"
    (gen / "chapters.md").write_text(chapters_table(chosen, dirs))
    (gen / "outlook.md").write_text(outlook_snippet(dirs, names, rows, chosen))
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

{chapters_table(chosen, dirs)}
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
