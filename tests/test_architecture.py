"""The library's shape: imports flow one way (data, models → checks → attacks, bounds → … → reproduce)."""
from __future__ import annotations

import ast
from pathlib import Path

import robustlib

PKG = Path(robustlib.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict:
    """{module: {(imported module, imported name or None)}} for imports inside robustlib (any depth)."""
    graph = {}
    for path in PKG.rglob("*.py"):
        mod = _module_name(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("robustlib"):
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if (PKG.parent / full.replace(".", "/")).with_suffix(".py").exists() or \
                            (PKG.parent / full.replace(".", "/") / "__init__.py").exists():
                        edges.add((full, None))           # `from . import attacks`: a module
                    else:
                        edges.add((target, alias.name))   # `from .checks import eval_mode`: a name
            elif isinstance(node, ast.Import):
                edges |= {(a.name, None) for a in node.names if a.name.startswith("robustlib")}
        graph[mod] = edges
    return graph


def _module_graph() -> dict:
    """Edges between robustlib's modules, the package roots themselves excluded (they only re-export)."""
    out = {}
    for mod, edges in _imports().items():
        if mod in ("robustlib", "robustlib.__main__"):
            continue
        out[mod] = {t for t, _ in edges if t not in ("robustlib",) and t != mod}
    return out


def test_imports_are_acyclic():
    graph = _module_graph()
    state: dict = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "active", "import cycle: " + " → ".join(path + [m])
        state[m] = "active"
        for t in sorted(graph.get(m, ())):
            if t.startswith(m + "."):      # a package importing its own submodules is not a cycle
                continue
            visit(t, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        visit(m, [])


def test_layers_follow_the_data():
    graph = _module_graph()
    below = {   # a module may not import any of these (they sit above it in the data flow)
        "robustlib.data": {"robustlib.models", "robustlib.attacks", "robustlib.bounds", "robustlib.objectives",
                           "robustlib.train", "robustlib.evaluate", "robustlib.reproduce"},
        "robustlib.checks": {"robustlib.attacks", "robustlib.bounds", "robustlib.objectives", "robustlib.train",
                             "robustlib.evaluate", "robustlib.reproduce", "robustlib.pruning"},
        "robustlib.allocator": {"robustlib.data", "robustlib.models", "robustlib.conv_kernels", "robustlib.checks",
                                "robustlib.attacks", "robustlib.bounds", "robustlib.objectives", "robustlib.train",
                                "robustlib.evaluate", "robustlib.reproduce"},
        "robustlib.precision": {"robustlib.data", "robustlib.models", "robustlib.conv_kernels", "robustlib.checks",
                                "robustlib.attacks", "robustlib.bounds", "robustlib.objectives", "robustlib.train",
                                "robustlib.evaluate", "robustlib.reproduce"},
        "robustlib.conv_kernels": {"robustlib.data", "robustlib.checks", "robustlib.attacks", "robustlib.bounds",
                                   "robustlib.objectives", "robustlib.train", "robustlib.evaluate",
                                   "robustlib.reproduce"},
        "robustlib.attacks": {"robustlib.objectives", "robustlib.train", "robustlib.evaluate", "robustlib.reproduce"},
        "robustlib.objectives": {"robustlib.train", "robustlib.evaluate", "robustlib.reproduce"},
        "robustlib.train": {"robustlib.evaluate", "robustlib.reproduce"},
        "robustlib.machine": {"robustlib.data", "robustlib.models", "robustlib.checks", "robustlib.attacks",
                              "robustlib.bounds", "robustlib.objectives", "robustlib.train", "robustlib.evaluate",
                              "robustlib.reproduce"},
        "robustlib.digests": {"robustlib.data", "robustlib.models", "robustlib.checks", "robustlib.attacks",
                              "robustlib.bounds", "robustlib.objectives", "robustlib.train", "robustlib.evaluate",
                              "robustlib.reproduce"},
        "robustlib.run_state": {"robustlib.attacks", "robustlib.bounds", "robustlib.objectives", "robustlib.train",
                                "robustlib.evaluate", "robustlib.reproduce"},
    }
    for mod, forbidden in below.items():
        assert not {t for t in graph[mod] if any(t == f or t.startswith(f + ".") for f in forbidden)}, mod
    for mod in [m for m in graph if m.startswith("robustlib.bounds")]:
        assert not {t for t in graph[mod] if t.split(".")[1] in ("attacks", "objectives", "train", "evaluate")}, mod
    importers = {m for m, ts in graph.items() if "robustlib.evaluate" in ts}
    assert importers <= {"robustlib.reproduce"}, f"only reproduce (and the notebooks) may import evaluate: {importers}"


def test_no_module_imports_private_names_of_another():
    bad = []
    for mod, edges in _imports().items():
        for target, name in edges:
            private = name and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            if private and target != mod:
                bad.append(f"{mod} imports {target}.{name}")
    assert not bad, bad


def test_small_files():
    sizes = {p.relative_to(PKG.parent).as_posix(): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    assert max(sizes.values()) <= 500, sizes   # one concept per file: a few hundred lines at most
