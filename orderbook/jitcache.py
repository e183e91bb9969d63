"""numba's cache, keyed by the sources the jitted code is compiled from.

numba checks a cached function against the file that defines it only (its modification time
and size).  The jitted modules also compile in constants and functions of other modules
(`orderbook.fast` reads `orderbook.types`, `orderbook.config`, `orderbook.reasons`, calls
`orderbook.statehash.hash_words`, ...): an edit to one of those would leave the old compiled
code running.  So each jitted module calls, after its imports and before its first ``@njit``:

    jitcache.use(__name__)

which points numba's cache (``numba.config.CACHE_DIR``, read when a dispatcher is decorated)
at ``<base>/<module>-<digest>``: the digest is a hash of the contents of every repository file
the module imports, transitively (`SOURCES`; tests/test_jitcache.py checks the list against the
imports), with the Python, numba and llvmlite versions.  A changed source is a new directory,
so a cold compile; switching back (another branch, a revert) finds the old one still there.

``<base>``, the first that can be created:

* ``$NUMBA_CACHE_DIR/gpux`` when the user set NUMBA_CACHE_DIR (their choice of place is kept);
* ``.numba-cache/`` in the checkout (the directory holding pyproject.toml and the packages;
  gitignored, `make clean` removes it): like numba's default (``__pycache__`` beside the
  sources) it is per checkout, so worktrees of different branches never prune or overwrite
  each other's, and it goes away with the checkout;
* ``$XDG_CACHE_HOME/gpux/numba`` (``~/.cache/gpux/numba``): an installed copy, whose
  directory is not a writable checkout.

When a module's directory is new, the older ones of the same module beyond the newest `KEEP`
(by last use) are removed.  Nothing here runs when NUMBA_DISABLE_JIT=1.
``python -m orderbook.jitcache`` prints each module's directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the directory holding the packages
KEEP = 4  # directories of a module kept (the current one included)

# Per jitted module: every repository file it imports, transitively, package __init__ files
# included (tests/test_jitcache.py walks the imports and requires exactly this list).
_ORDERBOOK = ("orderbook/__init__.py", "orderbook/jitcache.py")
SOURCES: dict[str, tuple[str, ...]] = {
    "orderbook.statehash": (*_ORDERBOOK, "orderbook/statehash.py"),
    "orderbook.fast": (*_ORDERBOOK, "orderbook/fast.py", "orderbook/config.py",
                       "orderbook/invariants.py", "orderbook/quote.py", "orderbook/reasons.py", "orderbook/rules.py",
                       "orderbook/statehash.py", "orderbook/types.py"),
    "clearing.intmap": (*_ORDERBOOK, "clearing/__init__.py", "clearing/intmap.py"),
    "clearing.core": (*_ORDERBOOK, "orderbook/borrow.py", "orderbook/types.py", "clearing/__init__.py",
                      "clearing/core.py", "clearing/ids.py", "clearing/intmap.py", "clearing/leases.py",
                      "clearing/money.py"),
    "exchange.statecore": (*_ORDERBOOK, "orderbook/borrow.py", "orderbook/types.py", "clearing/__init__.py",
                           "clearing/core.py", "clearing/ids.py", "clearing/intmap.py", "clearing/leases.py",
                           "clearing/money.py",
                           "exchange/__init__.py", "exchange/statecore.py"),
    "exchange.framescan": (*_ORDERBOOK, "exchange/__init__.py", "exchange/framescan.py"),
    "feeds.recording": (*_ORDERBOOK, "orderbook/types.py", "exchange/__init__.py", "exchange/framescan.py",
                        "exchange/journal.py",
                        "feeds/__init__.py", "feeds/recording.py"),
}


def digest(files: Mapping[str, bytes], versions: str) -> str:
    """The hash of some files' names and contents, and of ``versions``: 16 hex digits."""
    h = hashlib.sha256(versions.encode())
    for name in sorted(files):
        data = files[name]
        h.update(f"\0{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def versions() -> str:
    """What else the compiled code depends on: the interpreter and the compiler."""
    import llvmlite
    import numba

    return f"{sys.version} | {sys.implementation.cache_tag} | numba {numba.__version__} llvmlite {llvmlite.__version__}"


def sources(module: str, root: Path = ROOT) -> dict[str, bytes]:
    """The contents of `SOURCES[module]` under ``root``."""
    return {name: (root / name).read_bytes() for name in SOURCES[module]}


def bases(environ: Mapping[str, str] = os.environ, root: Path = ROOT) -> list[Path]:
    """Where the hashed directories may go, in order of preference (see the module's docstring)."""
    user = environ.get("NUMBA_CACHE_DIR")
    if user:
        return [Path(user).expanduser() / "gpux"]
    out = []
    if (root / "pyproject.toml").is_file() and os.access(root, os.W_OK):
        out.append(root / ".numba-cache")
    out.append(Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "gpux" / "numba")
    return out


def directory(module: str, base: Path, root: Path = ROOT, version: str | None = None) -> Path:
    """The cache directory of ``module`` under ``base`` for the sources under ``root``."""
    return base / f"{module}-{digest(sources(module, root), versions() if version is None else version)}"


def prune(current: Path, keep: int = KEEP) -> list[Path]:
    """Remove the directories of the same module as ``current`` but the newest ``keep`` by
    modification time (``current`` is always kept); returns those removed."""
    module = current.name.rpartition("-")[0]
    others = [p for p in current.parent.glob(f"{module}-*") if p != current and p.name.rpartition("-")[0] == module]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    gone = others[max(keep - 1, 0):]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def use(module: str, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Point numba's cache at ``module``'s directory (created, or its use time renewed), for the
    functions decorated from now on.  None (numba's default left alone) when the JIT is off or
    no base directory can be created."""
    import numba

    if numba.config.DISABLE_JIT:
        return None
    version = versions()
    for base in bases(environ):
        path = directory(module, base, version=version)
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            with contextlib.suppress(OSError):
                os.utime(path)  # its last use, for `prune`
        except OSError:
            continue
        else:
            with contextlib.suppress(OSError):
                prune(path)
        if not os.access(path, os.W_OK):
            continue
        numba.config.CACHE_DIR = str(path)
        return path
    return None


def cached(module: str) -> bool:
    """Whether compiled code of ``module``'s current sources is in a cache directory already."""
    return any(next(directory(module, base).rglob("*.nbi"), None) for base in bases())


def main() -> None:
    import numba

    for module in SOURCES:
        found = [directory(module, base) for base in bases()]
        path = next((p for p in found if p.is_dir()), found[0])
        state = "" if path.is_dir() else "  (not created yet)"
        print(f"{module}: {path}{state}")
    if numba.config.DISABLE_JIT:
        print("(NUMBA_DISABLE_JIT is set: nothing is compiled or cached)")


if __name__ == "__main__":
    main()
