"""The data directory and everything `gpux` writes in it are the owner's alone (0700 directories,
0600 files): the journal holds every order, the ledger every balance, provisioning answers hold
connection details, accounts.db the API secrets.  A real `gpux serve` process, a real account
with a deposit, a trade, a graceful stop (which writes a snapshot), then every path is checked."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def gpux(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_everything_in_the_data_directory_is_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = gpux("accounts", "create", "alice", "--role", "trader", "--deposit", "100", "--data", str(data))
    assert made.returncode == 0, made.stderr
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--data", str(data), "--port", "0",
                               "--engine", "reference"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "serving on" not in line:
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"gpux serve did not start: {server.stderr.read() if server.poll() is not None else ''}")
            line = server.stdout.readline()
        time.sleep(1.5)  # a clock tick: the deposit request is journaled
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert server.returncode == 0
    paths = [data, *data.rglob("*")]
    names = {p.relative_to(data).as_posix() for p in paths[1:]}
    assert {"accounts.db", "journal", "ledger.db", "exchange.id", "snapshots"} <= {n.split("/")[0] for n in names}
    loose = [f"{p.relative_to(tmp_path)} {stat.filemode(p.stat().st_mode)}" for p in paths
             if p.stat().st_mode & 0o077]
    assert not loose, loose
    assert all(p.stat().st_uid == os.getuid() for p in paths)
