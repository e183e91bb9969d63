"""The README's snippets run as pasted (issue 18): its Python runs against a live exchange this
test starts; every `gpux` command line of its shell walkthrough parses (options that exist,
prices and times as the CLI takes them); its `gpux simulate` example prints what it shows."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import build_parser
from tests.exchange_helpers import USD, running_exchange

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
HANG_S = 120


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_the_python_snippets_run_as_pasted(tmp_path):
    snippets = blocks("python")
    assert snippets, "the README has no Python snippet"

    async def scenario():
        async with running_exchange(tmp_path, fsync="off") as ex:
            _, pk, ps = ex.account("acme-dc", "provider")
            _, tk, ts = ex.account("alice", "trader", 1000 * USD)
            env = {**os.environ, "GPUX_URL": ex.url, "PROVIDER_KEY": pk, "PROVIDER_SECRET": ps,
                   "TRADER_KEY": tk, "TRADER_SECRET": ts}
            for i, code in enumerate(snippets):
                path = tmp_path / f"snippet{i}.py"
                path.write_text(code)
                p = await asyncio.create_subprocess_exec(sys.executable, str(path), env=env, cwd=tmp_path,
                                                         stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.PIPE)
                try:
                    out, err = await asyncio.wait_for(p.communicate(), HANG_S)
                except TimeoutError:
                    p.kill()
                    pytest.fail(f"README snippet {i} hung")
                assert p.returncode == 0, err.decode()
                assert "H100-1" in out.decode()  # the lease it bought, printed twice

    asyncio.run(scenario())


def walkthrough_commands() -> list[list[str]]:
    out = []
    for block in blocks("sh"):
        for line in block.splitlines():
            if not line.startswith("$ ") or "gpux " not in line:
                continue
            cmd = line[2:].split("  #")[0].split(" # ")[0].strip().rstrip("&").strip()
            cmd = cmd.replace("<provider's>", "gk_x").replace("<alice's>", "gk_x").replace("…", "x")
            words = shlex.split(cmd)
            i = next(n for n, w in enumerate(words) if w.endswith("gpux"))
            if words[i + 1] == "simulate":
                continue  # run below
            out.append(words[i + 1:])
    return out


def test_the_shell_walkthrough_parses():
    from cli.units import parse_money, parse_price

    commands = walkthrough_commands()
    assert {c[0] for c in commands} >= {"accounts", "serve", "ask", "bid", "leases", "agent", "release", "statement"}
    parser = build_parser()
    for words in commands:
        args = parser.parse_args(words)  # SystemExit on an option that does not exist
        for name in ("price", "spot_price", "limit"):
            if getattr(args, name, None) is not None:
                assert parse_price(getattr(args, name)) > 0, words
        if getattr(args, "deposit", None) is not None:
            assert parse_money(args.deposit) == 1000 * USD, words


def test_the_simulate_example_prints_what_it_shows():
    (block,) = [b for b in blocks("sh") if "gpux simulate" in b]
    cmd, shown = block.split("\n{\"type\":\"accepted\"", 1)
    shown = "{\"type\":\"accepted\"" + shown
    p = subprocess.run(["bash", "-c", cmd.replace("$ ", "", 1)], cwd=ROOT, capture_output=True, text=True,
                       timeout=HANG_S)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == shown.split()
