"""numba's cache keyed by the jitted code's sources (orderbook/jitcache.py): the hashed files are
exactly what each jitted module imports, an edit to any of them moves the cache to a new
directory (and an edit elsewhere does not), and the jitted modules' dispatchers cache there."""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import numba
import pytest

from orderbook import jitcache

ROOT = jitcache.ROOT


def _file_of(module: str) -> str | None:
    """The repository file of a dotted module name, or None (not ours)."""
    parts = module.split(".")
    for rel in (Path(*parts).with_suffix(".py"), Path(*parts, "__init__.py")):
        if (ROOT / rel).is_file() and (ROOT / parts[0] / "__init__.py").is_file():
            return rel.as_posix()
    return None


def _module_of(rel: str) -> str:
    return rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _imported(rel: str) -> set[str]:
    """The repository files one file imports (anywhere in it), with the packages they are in."""
    tree = ast.parse((ROOT / rel).read_text(), rel)
    package = _module_of(rel) if rel.endswith("__init__.py") else _module_of(rel).rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.append(mod)
            names += [f"{mod}.{a.name}" for a in node.names]  # `from pkg import module`
    files = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            f = _file_of(".".join(parts[:i]))
            if f:
                files.add(f)
    return files


def _closure(rel: str) -> set[str]:
    seen, todo = set(), [rel]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += _imported(f)
    return seen


def _repo_files() -> list[str]:
    skip = {".venv", ".git", "tests", "build", ".numba-cache"}
    return sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py")
                  if not skip & set(p.relative_to(ROOT).parts))


@pytest.mark.parametrize("module", sorted(jitcache.SOURCES))
def test_hashed_files_are_exactly_what_the_jitted_module_imports(module: str) -> None:
    rel = _file_of(module)
    imports = _closure(rel) | {_file_of(".".join(module.split(".")[:i])) for i in range(1, module.count(".") + 1)}
    hashed = set(jitcache.SOURCES[module])
    assert not imports - hashed, (f"{module} imports {sorted(imports - hashed)}: add them to "
                                  f"jitcache.SOURCES[{module!r}], or numba may run code compiled from their old text")
    assert not hashed - imports, f"{module} no longer imports {sorted(hashed - imports)}: drop them from SOURCES"


# Modules with cached jitted functions that do not use jitcache (yet): their jitted code reads
# nothing of other modules (literals only), so numba's own check against their file is right.
SELF_CONTAINED: set[str] = set()  # modules whose jitted code needs nothing from other modules


def test_every_cached_jitted_module_uses_its_directory() -> None:
    """A module with ``cache=True`` jitted functions is in SOURCES and calls ``jitcache.use(__name__)``
    before its first one (the cache directory is read when a function is decorated)."""
    cached = set()
    for rel in _repo_files():
        tree = ast.parse((ROOT / rel).read_text(), rel)
        lines = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and any(k.arg == "cache" and getattr(k.value, "value", None) is True for k in node.keywords)]
        if not lines or _module_of(rel) in SELF_CONTAINED:
            continue
        cached.add(_module_of(rel))
        uses = [node.lineno for node in tree.body if isinstance(node, ast.Expr)
                and ast.unparse(node.value) == "jitcache.use(__name__)"]
        assert uses and uses[0] < min(lines), f"{rel}: call jitcache.use(__name__) after the imports, before any @njit"
    assert cached == set(jitcache.SOURCES)


def test_a_changed_hashed_file_changes_the_directory() -> None:
    for module in jitcache.SOURCES:
        files = jitcache.sources(module)
        before = jitcache.digest(files, "v")
        assert jitcache.digest(dict(files), "v") == before
        for name, data in files.items():
            assert jitcache.digest({**files, name: data + b"\n# edited\n"}, "v") != before, name
            if b"1" in data:
                assert jitcache.digest({**files, name: data.replace(b"1", b"2", 1)}, "v") != before, name
            assert jitcache.digest({**files, name: b""} if data else {**files, name: b"\n"}, "v") != before, name
        assert jitcache.digest(files, "other numba") != before
        # the same bytes moved from one file to another are not the same sources
        a, b = sorted(files)[:2]
        assert jitcache.digest({**files, a: files[a] + files[b][:1], b: files[b][1:]}, "v") != before


def test_an_edit_on_a_copy_of_the_tree(tmp_path: Path) -> None:
    """On a copy of the checkout: an edit to a hashed file moves the module's directory, an edit
    to a file it does not import leaves it."""
    tree = tmp_path / "tree"
    for package in ("orderbook", "clearing", "settlement", "exchange", "feeds"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    base = tmp_path / "cache"

    def dirs() -> dict[str, Path]:
        return {m: jitcache.directory(m, base, root=tree, version="v") for m in jitcache.SOURCES}

    start = dirs()
    assert {m: p.name for m, p in start.items()} == {m: jitcache.directory(m, base, version="v").name
                                                     for m in jitcache.SOURCES}
    hashed = {f for files in jitcache.SOURCES.values() for f in files}
    unrelated = ["orderbook/reference.py", "clearing/engine.py", "settlement/store.py"]
    assert not hashed & set(unrelated)
    for rel in unrelated:
        with open(tree / rel, "a") as f:
            f.write("\nX = 1\n")
        assert dirs() == start, rel
    for rel in sorted(hashed):
        original = (tree / rel).read_bytes()
        (tree / rel).write_bytes(original + b"\nX = 1\n")
        now = dirs()
        for m, files in jitcache.SOURCES.items():
            assert (now[m] != start[m]) == (rel in files), (rel, m)
        (tree / rel).write_bytes(original)
    assert dirs() == start


def test_base_directories(tmp_path: Path) -> None:
    assert jitcache.bases({"NUMBA_CACHE_DIR": str(tmp_path)}) == [tmp_path / "gpux"]
    assert jitcache.bases({}) == [ROOT / ".numba-cache", Path.home() / ".cache" / "gpux" / "numba"]
    assert jitcache.bases({"XDG_CACHE_HOME": str(tmp_path)}, root=tmp_path) == [tmp_path / "gpux" / "numba"]


def test_use_creates_and_prunes(tmp_path: Path) -> None:
    old = numba.config.CACHE_DIR
    if numba.config.DISABLE_JIT:
        assert jitcache.use("clearing.core", {"NUMBA_CACHE_DIR": str(tmp_path)}) is None
        return
    base = tmp_path / "gpux"
    base.mkdir()
    stale = []
    for i in range(6):
        p = base / f"clearing.core-{i:016x}"
        p.mkdir()
        os.utime(p, (1_000_000 + i, 1_000_000 + i))
        stale.append(p)
    (base / "orderbook.fast-0000000000000000").mkdir()
    try:
        path = jitcache.use("clearing.core", {"NUMBA_CACHE_DIR": str(tmp_path)})
        assert path == jitcache.directory("clearing.core", base)
        assert numba.config.CACHE_DIR == str(path)
        left = sorted(p.name for p in base.iterdir())
        kept = [p.name for p in stale[-(jitcache.KEEP - 1):]]
        assert left == sorted([path.name, "orderbook.fast-0000000000000000", *kept])
        assert jitcache.use("clearing.core", {"NUMBA_CACHE_DIR": str(tmp_path)}) == path  # again: nothing pruned
        assert len(list(base.iterdir())) == len(left)
    finally:
        numba.config.CACHE_DIR = old


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="nothing is cached without the JIT")
def test_the_jitted_modules_cache_in_their_directories() -> None:
    from clearing import core
    from orderbook import fast, statehash

    for module, fn in ((fast, fast.process_batch), (core, core.apply), (statehash, statehash.hash_words)):
        name = module.__name__
        expected = next(p for p in (jitcache.directory(name, b) for b in jitcache.bases()) if p.is_dir())
        assert Path(fn._cache._cache_path).parent == expected, name
