"""The published book: built from the smoke executions with Sphinx warnings as errors, every internal link and image
resolved, every page opened in headless Chromium (screenshots under the test's tmp dir), and the staging rules
(best preset per chapter, labels, hidden cells, generated pages) on small throw-away trees."""
from __future__ import annotations

import functools
import html
import json
import re
import shutil
import subprocess
import threading
import time
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import yaml
import pytest

from conftest import ROOT
from robustlib import book, claims, glance, reproduce

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHAPTERS = reproduce.toc_notebooks(ROOT)
PAGES = ["index.html", "book/intro.html", "book/notation.html", "book/glance.html", "book/outlook.html",
         "book/performance.html", "book/glossary.html", "book/api.html", "book/references.html"] + [f"notebooks/{n}.html" for n in CHAPTERS]


# ---------------------------------------------------------------- the book built from the smoke executions

@pytest.fixture(scope="module")
def built(smoke_book, tmp_path_factory):
    """``(html_dir, seconds)``: the whole book rendered from the session's smoke executions, ``-W`` on."""
    results, _ = smoke_book
    out = tmp_path_factory.mktemp("book")
    t0 = time.perf_counter()
    index = reproduce.build(["smoke"], root=ROOT, log=lambda *a: None, results={"smoke": results}, out=out,
                            strict=True)
    return index.parent, time.perf_counter() - t0


class _Page(HTMLParser):
    """Links, images, ids and visible text of one HTML page (text inside script/style/pre/code kept apart)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs, self.ids, self.text, self.code, self.classes = [], set(), [], [], []
        self._skip, self._verbatim = 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if a.get("name") and tag == "a":
            self.ids.add(a["name"])
        if a.get("class"):
            self.classes.append((tag, a["class"]))
        for key in ("href", "src"):
            if a.get(key) and tag in ("a", "img", "link", "script", "source"):
                self.refs.append((tag, a[key]))
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("pre", "code"):
            self._verbatim += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("pre", "code"):
            self._verbatim = max(0, self._verbatim - 1)

    def handle_data(self, data):
        if not self._skip:
            (self.code if self._verbatim else self.text).append(data)


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _text(page: _Page) -> str:
    return re.sub(r"\s+", " ", " ".join(page.text))


def test_build_is_warning_free_and_complete(built):
    site, seconds = built
    for rel in PAGES:
        assert (site / rel).exists(), f"{rel} was not built"
    assert seconds < 240, f"the book took {seconds:.0f} s to build"
    print(f"book built in {seconds:.0f} s")


def test_every_chapter_says_which_preset_made_it(built):
    site, _ = built
    for name in CHAPTERS:
        text = _text(_parse(site / "notebooks" / f"{name}.html"))
        assert "Pipeline check, not a reproduction" in text and "smoke" in text, name
        assert "notebook wall-clock" in text, name


def test_papermill_and_colab_cells_are_hidden_but_kept(built, smoke_book):
    site, _ = built
    for name in CHAPTERS:
        page = (site / "notebooks" / f"{name}.html").read_text()
        assert "injected-parameters" not in page and "%pip install" not in page, name
        executed = nbformat.read(smoke_book[0] / f"{name}.ipynb", as_version=4)   # the notebooks keep them
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells), name


def test_learning_goals_and_hidden_solutions(built):
    site, _ = built
    for name in ("setting_the_stage", "adversarial_examples", "adversarial_training", "interval_analysis"):
        page = _parse(site / "notebooks" / f"{name}.html")
        text = _text(page)
        assert "Learning goals" in text and "Exercises" in text, name
        assert any("dropdown" in cls for _, cls in page.classes), f"{name}: solutions are not folded"


def test_launch_button_on_every_chapter(built):
    site, _ = built
    for name in CHAPTERS:
        page = (site / "notebooks" / f"{name}.html").read_text()
        assert f"colab.research.google.com/github/" in page and f"notebooks/{name}.ipynb" in page, name


def test_glance_has_one_row_per_claim(built, smoke_book):
    site, _ = built
    page = _parse(site / "book" / "glance.html")
    text = _text(page)
    for cid, c in claims.CLAIMS.items():
        assert c["text"] in text, f"{cid} missing from the glance page"
    rows = glance.glance_rows({"smoke": smoke_book[0]}, CHAPTERS)
    assert len(rows) == len(claims.CLAIMS)
    assert {r["verdict"] for r in rows} <= {"pipeline check only", "not yet run"}   # smoke never reproduces
    assert any(src.endswith("glance.png") for tag, src in page.refs if tag == "img")


def test_math_is_served_with_the_book(built):
    site, _ = built
    assert (site / "_static" / "mathjax" / "tex-chtml.js").exists()
    for rel in PAGES:
        page = (site / rel).read_text()
        assert "cdn.jsdelivr.net/npm/mathjax" not in page, f"{rel} loads MathJax from a CDN"
        if "class=\"math" in page:
            assert "_static/mathjax/tex-chtml.js" in page, rel


def test_internal_links_and_images_resolve(built):
    site, _ = built
    broken = []
    for path in sorted(site.rglob("*.html")):
        if "_static" in path.parts:
            continue
        for tag, ref in _parse(path).refs:
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith(("//", "mailto:", "javascript:")):
                continue
            target = path if not parts.path else (path.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{path.relative_to(site)}: <{tag}> {ref}")
            elif parts.fragment and target.suffix == ".html" and parts.fragment not in _parse(target).ids:
                broken.append(f"{path.relative_to(site)}: <{tag}> {ref} (no such anchor)")
    assert not broken, "\n".join(broken[:30])


# ---------------------------------------------------------------- every page in headless Chromium

PROBE = b"""<script>
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('img').forEach(function (i) { i.loading = 'eager'; });
});
window.addEventListener('load', function () {
  var bad = [];
  document.querySelectorAll('img').forEach(function (i) {
    if (!(i.complete && i.naturalWidth > 0)) bad.push(i.getAttribute('src'));
  });
  document.body.setAttribute('data-probe-broken-images', JSON.stringify(bad));
});
</script>"""


class _Server(ThreadingHTTPServer):
    """A loopback server for the built book that remembers every request it could not answer."""
    missing: list

    def handle_error(self, request, client_address):   # a browser that closes early is not a failure
        pass


class _Handler(SimpleHTTPRequestHandler):
    """Serves the built book; HTML pages get a small probe script that marks images that did not load."""

    def log_message(self, *args):
        pass

    def send_error(self, code, message=None, explain=None):
        if self.path != "/favicon.ico":   # the browser asks for it whatever the page says
            self.server.missing.append(f"{code} {self.path}")
        super().send_error(code, message, explain)

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes().replace(b"</body>", PROBE + b"</body>", 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        import io
        return io.BytesIO(body)


@pytest.fixture(scope="module")
def server(built):
    site, _ = built
    httpd = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    httpd.missing = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _chromium(url: str, profile: Path, *extra: str, timeout: int = 90) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
           "--window-size=1280,2000", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return out.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; "
                                             ".ci/run installs it when it runs as root)")
def test_every_page_in_chromium(built, server, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    problems = []
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for rel in PAGES:
        url = f"{base}/{rel}"
        dom = _chromium(url, tmp_path / "profile-dom", "--dump-dom")
        png = shots / (rel.replace("/", "__").removesuffix(".html") + ".png")
        _chromium(url, tmp_path / "profile-shot", f"--screenshot={png}", "--hide-scrollbars")
        if not dom.strip():
            problems.append(f"{rel}: Chromium returned no DOM")
            continue
        page = _Page()
        page.feed(dom)
        text = _text(page)
        if "Traceback (most recent call last)" in text + " ".join(page.code) or \
                any(re.search(r"\b(traceback|output error)\b", cls) for _, cls in page.classes):
            problems.append(f"{rel}: shows a Python traceback or error output")
        m = re.search(r'data-probe-broken-images="([^"]*)"', dom)
        if m is None:
            problems.append(f"{rel}: the page never finished loading")
        elif json.loads(html.unescape(m.group(1))):
            problems.append(f"{rel}: images that do not load: {html.unescape(m.group(1))}")
        raw = [s for s in (r"\(", r"\)", r"\[", r"\]", "$$") if s in text]
        if raw:
            problems.append(f"{rel}: unrendered math {raw} in the rendered text")
        source = (built[0] / rel).read_text()
        if 'class="math' in source and "<mjx-container" not in dom:
            problems.append(f"{rel}: MathJax did not typeset the page's math")
        if not png.exists() or png.stat().st_size < 5000:
            problems.append(f"{rel}: no screenshot")
    if server.missing:
        problems.append(f"the pages asked for files the book does not have: {sorted(set(server.missing))}")
    print(f"screenshots in {shots}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- staging rules on throw-away trees

def _executed(folder: Path, name: str, preset: str, status: str = "ok", rows=(), params=None, code="x = 1"):
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    install = nbformat.v4.new_code_cell('if False:\n    %pip install -q "robustlib @ git+https://example.org"')
    p = nbformat.v4.new_code_cell('preset = "smoke"')
    p.metadata["tags"] = ["parameters"]
    inj = nbformat.v4.new_code_cell(f'# Parameters\npreset = "{preset}"\n')
    inj.metadata["tags"] = ["injected-parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}\n\nold text"), install, p, inj, nbformat.v4.new_code_cell(code)]
    nb.metadata["papermill"] = {"parameters": dict(params or {"preset": preset, "results_dir": "."})}
    nbformat.write(nb, folder / f"{name}.ipynb")
    (folder / f"{name}.json").write_text(json.dumps({"notebook": name, "preset": preset, "status": status,
                                                     "device": "CPU (test)", "started": "2026-01-01T00:00:00",
                                                     "wall_s": 12.0, "rows": list(rows), "config": {}}))


def test_best_preset_per_chapter(tmp_path):
    res = tmp_path / "results"
    _executed(res / "gpu", "a", "gpu", status="failed")
    _executed(res / "cpu", "a", "cpu")
    _executed(res / "smoke", "a", "smoke")
    _executed(res / "smoke", "b", "smoke")
    dirs = book.results_dirs(reproduce.preference("best"), res)
    chosen = book.choose(["a", "b", "c"], dirs)
    assert chosen["a"].preset == "cpu"          # a failed gpu run does not beat a successful cpu run
    assert chosen["b"].preset == "smoke" and chosen["c"] is None
    assert reproduce.preference("best") == ["paper", "gpu", "cpu", "smoke"]
    assert reproduce.preference("gpu,smoke") == ["gpu", "smoke"]
    only_failed = book.choose(["a"], book.results_dirs(["gpu"], res))
    assert only_failed["a"].preset == "gpu" and not only_failed["a"].ok   # still rendered, with its error


def test_book_best_executes_only_chapters_without_real_results(tmp_path, monkeypatch):
    root = tmp_path
    (root / "notebooks").mkdir()
    for n in ("a", "b"):
        nbformat.write(nbformat.v4.new_notebook(), root / "notebooks" / f"{n}.ipynb")
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/a\n"
                                   "  - file: notebooks/b\n")
    _executed(root / "results" / "cpu", "a", "cpu")
    assert reproduce.without_results(root) == ["b"]
    calls = {}
    monkeypatch.setattr(reproduce, "run", lambda preset, only=None, **kw: calls.update(preset=preset, only=only) or
                        {n: None for n in only})
    monkeypatch.setattr(reproduce, "build", lambda prefer, **kw: calls.update(prefer=prefer) or root / "index.html")
    assert reproduce.main(["book", "--preset", "best", "--root", str(root)]) == 0
    assert calls == {"preset": "smoke", "only": ["b"], "prefer": ["paper", "gpu", "cpu", "smoke"]}
    with pytest.raises(SystemExit):
        reproduce.main(["reproduce", "--preset", "best", "--root", str(root)])


def test_staged_chapter_is_labelled_refreshed_and_hides_cells(tmp_path):
    _executed(tmp_path / "cpu", "a", "cpu", params={"preset": "cpu", "epochs": 20, "results_dir": "../x"})
    source = nbformat.read(tmp_path / "cpu" / "a.ipynb", as_version=4)
    source.cells = [c for c in source.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    source.cells[0].source = "# a\n\nnew text"
    source.cells.append(nbformat.v4.new_markdown_cell("## Exercises"))
    nbformat.write(source, tmp_path / "a.ipynb")
    ex = book.choose(["a"], {"cpu": tmp_path / "cpu"})["a"]
    nb = book.prepare_notebook(tmp_path / "a.ipynb", ex)
    first = nb.cells[0].source
    assert first.startswith("# a\n") and "Rendered from preset cpu" in first and "new text" in first
    assert "`epochs = 20`" in first and "results_dir" not in first and "CPU (test)" in first
    assert nb.cells[-1].source == "## Exercises"           # today's markdown around yesterday's outputs
    hidden = [c for c in nb.cells if "remove-cell" in c.metadata.get("tags", [])]
    assert len(hidden) == 2 and any("%pip" in c.source for c in hidden)
    assert any("injected-parameters" in c.metadata["tags"] for c in hidden)
    smoke = book.banner(book.Executed("a", "smoke", tmp_path / "a.ipynb", {"status": "ok", "wall_s": 3}))
    assert "Pipeline check, not a reproduction" in smoke and ":class: warning" in smoke
    failed = book.banner(book.Executed("a", "gpu", tmp_path / "a.ipynb", {"status": "failed", "error": "OOM"}))
    assert "failed" in failed and "OOM" in failed


def test_a_changed_default_that_the_run_overrode_keeps_the_page_refreshed():
    """A smoke default changed in the parameters cell after a cpu run that set that parameter itself leaves the run's
    code today's (its page gets today's markdown); a changed default the run used, a new parameter or any other
    changed cell makes it stale."""
    def cells(params: str, body: str = "x = epochs + 1"):
        return [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(body)]

    ran = cells("epochs = 10   # smoke\nn_eval = None\nname = 'a'")
    injected = {"epochs": 10, "preset": "cpu"}
    assert book.same_code(ran, cells("epochs = 7    # smoke; cpu: 10\nn_eval = None\nname = 'a'"), injected)
    assert book.same_code(ran, cells("epochs = 10\nn_eval = None\nname = \"a\""), {})          # same values
    assert not book.same_code(ran, cells("epochs = 10\nn_eval = 200\nname = 'a'"), injected)   # used by the run
    assert not book.same_code(ran, cells("epochs = 7\nn_eval = None\nname = 'a'\nk = 5"), injected)
    assert not book.same_code(ran, cells("epochs = 7\nn_eval = None\nname = 'a'", "x = epochs + 2"), injected)
    assert not book.same_code(ran, cells("epochs = 7\nif True:\n    n_eval = None\nname = 'a'"), injected)
    assert not book.same_code(ran, ran[:1], injected)


def test_other_real_data_runs_become_section_pages(tmp_path):
    root = tmp_path
    (root / "notebooks").mkdir()
    (root / "book").mkdir()
    (root / "book" / "intro.md").write_text("# Intro\n")
    (root / "_config.yml").write_text("title: t\n")
    (root / "_toc.yml").write_text("# a comment\nformat: jb-book\nroot: book/intro\nparts:\n  - caption: P\n"
                                   "    chapters:\n      - file: notebooks/a\n      - file: notebooks/b\n")
    res = root / "results"
    for preset in ("gpu", "cpu", "smoke"):
        _executed(res / preset, "a", preset, params={"preset": preset, "results_dir": "."})
    _executed(res / "paper", "a", "paper", status="failed")           # a failed run gets no page of its own
    _executed(res / "cpu", "b", "cpu")
    nbformat.write(nbformat.read(res / "cpu" / "a.ipynb", as_version=4), root / "notebooks" / "a.ipynb")
    nbformat.write(nbformat.read(res / "cpu" / "b.ipynb", as_version=4), root / "notebooks" / "b.ipynb")
    dirs = book.results_dirs(reproduce.preference("best"), res)
    chosen = book.choose(["a", "b"], dirs)
    assert [e.preset for e in book.also_run("a", dirs, chosen["a"])] == ["cpu"]   # not smoke, not the failed one
    assert book.also_run("b", dirs, chosen["b"]) == [] and book.also_run("c", dirs, None) == []
    table = glance.chapters_table(chosen, dirs).splitlines()
    assert table[2].endswith("| {doc}`cpu </notebooks/a-cpu>` |") and table[3].endswith("| – |")

    src = reproduce.stage(reproduce.preference("best"), root=root, log=lambda *a: None,
                          out=tmp_path / "out")
    toc = yaml.safe_load((src / "_toc.yml").read_text())
    a, b = toc["parts"][0]["chapters"]
    assert a == {"file": "notebooks/a", "sections": [{"file": "notebooks/a-cpu"}]} and b == {"file": "notebooks/b"}
    main = nbformat.read(src / "notebooks" / "a.ipynb", as_version=4).cells[0].source
    other = nbformat.read(src / "notebooks" / "a-cpu.ipynb", as_version=4).cells[0].source
    assert main.startswith("# a\n") and "Rendered from preset gpu" in main and "{doc}`/notebooks/a-cpu`" in main
    assert other.startswith("# a (preset cpu)\n") and "The same chapter at preset cpu" in other
    assert "shows the gpu run" in other and "{doc}`/notebooks/a`" in other and "Rendered from" not in other
    assert not (src / "notebooks" / "a-smoke.ipynb").exists() and not (src / "notebooks" / "a-paper.ipynb").exists()

    html = tmp_path / "html" / "notebooks"
    html.mkdir(parents=True)
    colab = "https://colab.research.google.com/github/o/r/blob/main/notebooks/{}.ipynb"
    (html / "a-cpu.html").write_text(f'<a href="{colab.format("a-cpu")}">Colab</a> '
                                     '<a href="../_sources/notebooks/a-cpu.ipynb">.ipynb</a>')
    assert book.retarget_launch_buttons(html.parent, (src / "_toc.yml").read_text()) == ["notebooks/a-cpu"]
    page = (html / "a-cpu.html").read_text()
    assert colab.format("a") in page and "a-cpu.ipynb\">Colab" not in page   # the chapter's notebook: it exists
    assert "_sources/notebooks/a-cpu.ipynb" in page                            # the download stays the executed copy


def test_a_stale_main_page_points_to_the_run_with_todays_text(tmp_path):
    """A chapter whose best run (gpu) predates today's code, while its cpu run is current: the main page says it
    shows the executed version's text and links the cpu page, which carries today's text."""
    root = tmp_path
    (root / "notebooks").mkdir()
    (root / "book").mkdir()
    (root / "book" / "intro.md").write_text("# Intro\n")
    (root / "_config.yml").write_text("title: t\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/a\n")
    res = root / "results"
    _executed(res / "gpu", "a", "gpu", code="x = 1")
    _executed(res / "cpu", "a", "cpu", code="x = 2")
    today = nbformat.read(res / "cpu" / "a.ipynb", as_version=4)
    today.cells = [c for c in today.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    today.cells[0].source = "# a\n\ntoday's text"
    nbformat.write(today, root / "notebooks" / "a.ipynb")
    dirs = book.results_dirs(reproduce.preference("best"), res)
    ex = book.choose(["a"], dirs)["a"]
    cpu = book.also_run("a", dirs, ex)[0]
    assert not book.is_current(root / "notebooks" / "a.ipynb", ex) and book.is_current(root / "notebooks" / "a.ipynb", cpu)
    src = reproduce.stage(reproduce.preference("best"), root=root, log=lambda *a: None, out=tmp_path / "out")
    main = nbformat.read(src / "notebooks" / "a.ipynb", as_version=4).cells[0].source
    other = nbformat.read(src / "notebooks" / "a-cpu.ipynb", as_version=4).cells[0].source
    assert "predates the current notebook's code" in main and "old text" in main and "today's text" not in main
    assert "The chapter's current text is on the page of its cpu run: {doc}`/notebooks/a-cpu`" in main
    assert "today's text" in other and "predates" not in other


def test_glance_rows_prefer_the_best_record(tmp_path):
    res = tmp_path / "results"
    _executed(res / "cpu", "at", "cpu", rows=[claims.claim_row("p1-at-cost", 7.5, dataset="fashion-mnist")])
    _executed(res / "smoke", "at", "smoke", rows=[claims.claim_row("p1-at-cost", 3.0)])
    _executed(res / "smoke", "mt", "smoke", rows=[claims.claim_row("p2-vra", 0.5, network="small_cnn")])
    rows = {r["id"]: r for r in glance.glance_rows(book.results_dirs(["gpu", "cpu", "smoke"], res), ["at", "mt"])}
    assert set(rows) == set(claims.CLAIMS)
    assert rows["p1-at-cost"]["preset"] == "cpu" and rows["p1-at-cost"]["verdict"] == "reproduced"
    assert rows["p1-at-cost"]["dataset"] == "fashion-mnist" and rows["p1-at-cost"]["measured"] == "7.50×"
    assert rows["p2-vra"]["verdict"] == "pipeline check only" and rows["p2-vra"]["measured"] == "50.0%"
    assert rows["p2-vs-at"]["verdict"] == "not yet run" and rows["p2-vs-at"]["preset"] is None
    chosen = book.choose(["at", "mt"], book.results_dirs(["cpu", "smoke"], res))
    out = glance.write_generated(tmp_path / "staged", chosen, book.results_dirs(["cpu", "smoke"], res), ["at", "mt"])
    page = (tmp_path / "staged" / "glance.md").read_text()
    assert page.count("\n| ") >= len(claims.CLAIMS) and "{bdg-success}`reproduced`" in page
    assert (tmp_path / "staged" / "_generated" / "glance.png").stat().st_size > 10_000
    outlook = (tmp_path / "staged" / "_generated" / "outlook.md").read_text()
    assert "not yet run" in outlook and len(out["rows"]) == len(claims.CLAIMS)


def test_the_interval_attack_claim_counts_images_not_points():
    claim = claims.CLAIMS["p2-interval-attack"]
    assert glance.claimed_text(claim) == "at least 1 image"
    assert glance._fmt(1.0, claim["unit"]) == "1 image" and glance._fmt(3, claim["unit"]) == "3 images"
    assert claims.verdict("p2-interval-attack", 1) == "reproduced"
    assert claims.verdict("p2-interval-attack", 0) == "not reproduced"


def test_the_outlook_collects_the_combinations_rows_and_not_their_seed_repeats(tmp_path):
    res = tmp_path / "results"
    rows = [dict(section="sampling", sampling="worst-ibp", symbolic_vra=0.35),
            dict(section="outlook", idea="pruned-certified", method="gradmatch", symbolic_vra=0.24),
            dict(section="seeds", variant="k = 5, fixed, worst-ibp", sampling="worst-ibp", seed=1, symbolic_vra=0.29),
            dict(section="seeds_pruning", method="gradmatch", seed=1, symbolic_vra=0.25)]
    _executed(res / "cpu", "mt", "cpu", rows=rows)
    dirs = book.results_dirs(["cpu"], res)
    outlook = glance.outlook_snippet(dirs, ["mt"], glance.glance_rows(dirs, ["mt"]))
    assert "0.35" in outlook and "0.24" in outlook          # the sampling section and the outlook row
    assert "0.29" not in outlook and "0.25" not in outlook  # the seed repeats stay on the chapter's page
