"""The layering of docs/architecture.md ("Layers") as a checked contract.

Every ``import`` of ``kestrel.*`` in runtime/kestrel is read from the source (AST, no import
of the code): imports inside functions count as much as those at the top, and so do
``TYPE_CHECKING`` imports (a type is a dependency too). A package may import only packages in
lower layers; packages in one layer ("|") may not import one another; no package imports a
private name (``_x``) of another package.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "runtime" / "kestrel"

# Bottom to top; the same list, drawn, is in docs/architecture.md. ``errors`` is the one
# module at the bottom of everything; the root package (kestrel/__init__, __main__) sits above.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("_internal",),
    ("identity",),
    ("ledger",),
    ("policy",),
    ("ota",),
    ("io", "inference"),
    ("memory",),
    ("agent", "sync"),
    ("daemon",),
    ("sdk",),
    ("cli",),
]
TOP = ("__init__", "__main__")


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[0]


def _module_name(path: Path) -> tuple[list[str], bool]:
    rel = list(path.relative_to(ROOT).with_suffix("").parts)
    is_pkg = rel[-1] == "__init__"
    return ["kestrel", *(rel[:-1] if is_pkg else rel)], is_pkg


@functools.cache
def _imports(path: Path) -> list[tuple[int, list[str], list[str]]]:
    """(line, imported module path, imported names) for each kestrel import in ``path``."""
    mod, is_pkg = _module_name(path)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split("."), []) for a in node.names if a.name.split(".")[0] == "kestrel"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod if is_pkg else mod[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            if target[0] == "kestrel":
                out.append((node.lineno, target, [a.name for a in node.names]))
    return out


def _edges() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> where ("file:line")."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(ROOT.rglob("*.py")):
        pkg = _package_of(path)
        for line, target, names in _imports(path):
            # ``from kestrel import x`` / ``from .. import x`` name sub-packages as names
            targets = [target[1]] if len(target) > 1 else [n for n in names if n != "*"]
            for t in targets:
                if t != pkg:
                    edges[(pkg, t)].append(f"{path.relative_to(ROOT)}:{line}")
    return edges


def _rank() -> dict[str, int]:
    return {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def test_every_package_has_a_layer():
    packages = {_package_of(p) for p in ROOT.rglob("*.py")} - set(TOP)
    assert packages, "no packages found: is ROOT right?"
    assert packages == set(_rank()), "add the new package to LAYERS here and in docs/architecture.md"


def test_no_package_imports_one_above_it_or_beside_it():
    rank = _rank()
    edges = _edges()
    assert edges, "no imports found: the scan is broken"
    bad = []
    for (src, dst), where in sorted(edges.items()):
        if src in TOP:
            continue  # the root package is the composition root: it may wire anything
        if dst in TOP:
            bad.append(f"{src} imports the root package kestrel ({', '.join(where[:3])})")
        elif rank[dst] >= rank[src]:
            how = "beside" if rank[dst] == rank[src] else "above"
            bad.append(f"{src} imports {dst}, a layer {how} it ({', '.join(where[:3])})")
    assert not bad, "layering broken (docs/architecture.md, 'Layers'):\n" + "\n".join(bad)


def test_no_cycles_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in _edges():
        if src not in TOP and dst not in TOP:
            graph[src].add(dst)
    seen: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in seen and (cycle := visit(nxt, path + [node])):
                return cycle
        seen[node] = 2
        return None

    for start in sorted(graph):
        if start not in seen:
            cycle = visit(start, [])
            assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_no_private_names_across_packages():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        pkg = _package_of(path)
        for line, target, names in _imports(path):
            if len(target) < 2 or target[1] == pkg:
                continue
            private = [p for p in target[2:] if p.startswith("_") and p != "__init__"]
            private += [n for n in names if n.startswith("_")]
            if private:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {'.'.join(target)}: {', '.join(private)}")
    assert not bad, "private names used across packages (make them public or move them):\n" + "\n".join(bad)


def test_the_scan_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: an import inside a function, two dots up, is an edge."""
    global ROOT
    saved = ROOT
    ROOT = tmp_path / "kestrel"
    try:
        (ROOT / "policy").mkdir(parents=True)
        (ROOT / "ota").mkdir()
        (ROOT / "policy" / "__init__.py").write_text("")
        (ROOT / "ota" / "__init__.py").write_text("")
        (ROOT / "policy" / "engine.py").write_text("def f():\n    from ..ota.apply import _x\n")
        assert _edges() == {("policy", "ota"): ["policy/engine.py:2"]}
        assert _imports(ROOT / "policy" / "engine.py") == [(2, ["kestrel", "ota", "apply"], ["_x"])]
    finally:
        ROOT = saved
