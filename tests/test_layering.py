"""The layering of docs/architecture.md holds: every import in the source, at module level, inside
functions and under ``TYPE_CHECKING`` alike, goes to the importer's own package or to a package
on a lower layer, and no modules import each other in a circle.

The layers are read from the architecture page itself (the numbered list between the
``<!-- layers -->`` markers), so the page and this test cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"


def layers() -> list[list[str]]:
    """The packages of each layer, bottom first: ``1. `orderbook` — ...``."""
    text = PAGE.read_text()
    block = text.split("<!-- layers -->")[1]
    out = []
    for line in block.splitlines():
        m = re.match(r"\s*\d+\.\s+(.*)", line)
        if m:
            head = m.group(1).split(" — ")[0]
            out.append(re.findall(r"`([a-z_.]+)`", head))
    return out


def modules() -> dict[str, Path]:
    """Every module of the source packages (tests are not part of the layering)."""
    names = {p for layer in layers() for p in layer}
    tops = sorted({n.split(".")[0] for n in names})
    out = {}
    for top in tops:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> list[tuple[str, int]]:
    """The repository modules a file imports (every import statement, wherever it stands), with lines."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = []

    def resolve(t: str) -> str | None:  # the longest repository module a dotted name is, or lies in
        parts = t.split(".")
        for k in range(len(parts), 0, -1):
            cand = ".".join(parts[:k])
            if cand in known:
                return cand
        return None

    for node in ast.walk(tree):
        found: list[str | None] = []
        if isinstance(node, ast.Import):
            found = [resolve(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            # a name imported from a package may be a module of it
            found = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else resolve(base) for a in node.names]
        for t in dict.fromkeys(found):
            if t is not None and t != name:
                out.append((t, node.lineno))
    return out


def layer_of(module: str, table: list[list[str]]) -> tuple[int, str]:
    """(layer index, package) of a module: the longest package of the table that contains it."""
    best: tuple[int, str] | None = None
    for i, pkgs in enumerate(table):
        for p in pkgs:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (i, p)
    if best is None:
        raise AssertionError(f"{module} is on no layer of docs/architecture.md")
    return best


def graph() -> dict[str, list[tuple[str, int]]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, name, known) for name, path in mods.items()}


def test_the_architecture_page_lists_the_layers() -> None:
    table = layers()
    assert len(table) >= 5, table
    flat = [p for layer in table for p in layer]
    assert len(flat) == len(set(flat)), "a package is on two layers"
    for p in flat:
        assert (ROOT / p.replace(".", "/")).exists() or (ROOT / (p.replace(".", "/") + ".py")).exists(), p


def test_every_import_goes_down_the_layers() -> None:
    table = layers()
    bad = []
    for name, targets in graph().items():
        mine, my_pkg = layer_of(name, table)
        for target, line in targets:
            theirs, their_pkg = layer_of(target, table)
            # up is never allowed; sideways only within one package (settlement's rule modules)
            if theirs > mine or (theirs == mine and their_pkg.split(".")[0] != my_pkg.split(".")[0]):
                bad.append(f"{name}:{line} imports {target} ({their_pkg}, layer {theirs + 1}; "
                           f"{my_pkg} is on layer {mine + 1})")
    assert not bad, "imports against the layering of docs/architecture.md:\n" + "\n".join(sorted(bad))


def test_no_import_circles() -> None:
    g = {name: sorted({t for t, _ in targets}) for name, targets in graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components (the graph is small)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not circles, "modules that import each other in a circle: " + "; ".join(", ".join(c) for c in circles)


@pytest.mark.parametrize("source, expected", [
    ("from exchange.engine import Engine\n", ["exchange.engine"]),
    ("import exchange.journal as j\n", ["exchange.journal"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.exchange import Exchange\n", ["app.exchange"]),
    ("def f():\n    from gateway import auth\n", ["gateway.auth"]),
])
def test_the_walk_sees_every_kind_of_import(tmp_path: Path, source: str, expected: list[str]) -> None:
    """The walk finds imports under TYPE_CHECKING and inside functions, and names imported from a
    package that are modules (so the layering test cannot pass by not seeing an import)."""
    f = tmp_path / "probe.py"
    f.write_text(source)
    found = [t for t, _ in imports(f, "orderbook.probe", set(modules()))]
    assert found == expected
