"""The agent's ssh backend, without the exchange: a real asyncssh server per lease, a real client
logging in with the renter's key (and refused with any other), teardown closing it all."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.backend import BackendError
from agent.ssh import SshBackend
from agent.sshlib import asyncssh
from agent.tasks import ProvisionTask

pytestmark = pytest.mark.timeout(60)


def _task(key: asyncssh.SSHKey | None, lease: str = "H100-7", gpus: int = 2, seconds: int = 600) -> ProvisionTask:
    now = int(time.time())
    return ProvisionTask(lease=lease, gpu_class="H100", trade_id=7, kind="on_demand", gpus=gpus, start=now,
                         end=now + seconds, renter=12,
                         ssh_public_key=key.export_public_key().decode() if key is not None else "")


async def _login(conn: dict, key: asyncssh.SSHKey, **kw) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(conn["host"], conn["port"], username=kw.pop("username", "gpux"),
                                  client_keys=[key], known_hosts=None, **kw)


def test_renter_logs_in_runs_a_command_with_the_lease_env(tmp_path: Path) -> None:
    async def go() -> None:
        b = SshBackend(tmp_path)
        renter = asyncssh.generate_private_key("ssh-ed25519")
        conn = await b.provision(_task(renter), [3, 5])
        assert conn["host"] == "127.0.0.1" and conn["user"] == "gpux" and conn["port"] > 0
        async with await _login(conn, renter) as c:
            r = await c.run("echo $GPUX_LEASE $GPUX_GPUS $CUDA_VISIBLE_DEVICES; pwd; echo oops >&2; exit 3")
            lines = r.stdout.splitlines()
            assert lines[0] == "H100-7 2 3,5"
            assert lines[1] == str(tmp_path / "leases" / "H100-7")
            assert r.stderr == "oops\n" and r.exit_status == 3
            # stdin goes through, large output arrives whole
            r = await c.run("wc -c", input="x" * 200_000)
            assert r.stdout.strip() == "200000"
            r = await c.run("seq 1 100000")
            assert r.stdout.splitlines()[-1] == "100000"
            # a shell on a pseudo-terminal
            p = await c.create_process(term_type="xterm", term_size=(80, 24))
            p.stdin.write("echo lease=$GPUX_LEASE term=$TERM\nexit 4\n")
            out = await asyncio.wait_for(p.stdout.read(), 10)
            assert "lease=H100-7 term=xterm" in out
            assert (await p.wait()).exit_status == 4
            # sftp, rooted in the lease's directory
            async with c.start_sftp_client() as sftp:
                async with sftp.open("model.txt", "w") as f:
                    await f.write("weights")
            assert (tmp_path / "leases" / "H100-7" / "model.txt").read_text() == "weights"
        await b.close()

    asyncio.run(go())


def test_only_the_renters_key_is_admitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUX_SECRET", "the-providers-secret")

    async def go() -> None:
        b = SshBackend(tmp_path)
        renter = asyncssh.generate_private_key("ssh-ed25519")
        other = asyncssh.generate_private_key("ssh-ed25519")
        conn = await b.provision(_task(renter), [])
        with pytest.raises(asyncssh.PermissionDenied):
            await _login(conn, other)
        with pytest.raises(asyncssh.PermissionDenied):  # no password auth either
            await asyncssh.connect(conn["host"], conn["port"], username="gpux", password="x", client_keys=None,
                                   known_hosts=None)
        async with await _login(conn, renter, username="anyone") as c:
            r = await c.run("echo ${CUDA_VISIBLE_DEVICES-unset}")
            assert r.stdout.strip() == "unset"  # the agent assigns no GPU ids (--gpus 0)
            r = await c.run("env")
            assert "GPUX_SECRET" not in r.stdout and "GPUX_LEASE=H100-7" in r.stdout
        await b.close()

    asyncio.run(go())


def test_teardown_closes_sessions_kills_processes_and_the_port(tmp_path: Path) -> None:
    async def go() -> None:
        b = SshBackend(tmp_path)
        renter = asyncssh.generate_private_key("ssh-ed25519")
        conn = await b.provision(_task(renter), [0])
        c = await _login(conn, renter)
        p = await c.create_process("sleep 300 & echo $!; wait")
        pid = int(await asyncio.wait_for(p.stdout.readline(), 10))
        await b.teardown("H100-7")
        await asyncio.wait_for(c.wait_closed(), 10)
        with pytest.raises(OSError):
            await _login(conn, renter)
        assert not (tmp_path / "leases" / "H100-7").exists()
        for _ in range(100):  # the background sleep was in the session's process group
            if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the lease's background process survived teardown")
        await b.teardown("H100-7")  # again: harmless
        await b.close()

    asyncio.run(go())


def test_host_key_is_kept_and_a_renter_can_pin_it(tmp_path: Path) -> None:
    async def go() -> None:
        first = SshBackend(tmp_path)
        second = SshBackend(tmp_path)
        assert first.host_key_line == second.host_key_line
        assert oct((tmp_path / "ssh_host_ed25519_key").stat().st_mode & 0o777) == "0o600"
        renter = asyncssh.generate_private_key("ssh-ed25519")
        conn = await second.provision(_task(renter), [])
        known = asyncssh.import_known_hosts(f"[{conn['host']}]:{conn['port']} {conn['host_key']}\n")
        async with asyncssh.connect(conn["host"], conn["port"], username="gpux", client_keys=[renter],
                                    known_hosts=known) as c:
            assert (await c.run("echo ok")).stdout == "ok\n"
        await second.close()

    asyncio.run(go())


def test_a_lease_without_a_usable_key_fails(tmp_path: Path) -> None:
    async def go() -> None:
        b = SshBackend(tmp_path)
        with pytest.raises(BackendError, match="renter has no SSH key"):
            await b.provision(_task(None), [])
        bad = ProvisionTask(lease="H100-8", gpus=1, end=int(time.time()) + 60, ssh_public_key="ssh-ed25519 nope")
        with pytest.raises(BackendError, match="cannot be read"):
            await b.provision(bad, [])
        assert not b.leases

    asyncio.run(go())


def test_previous_port_is_reused_when_free(tmp_path: Path) -> None:
    async def go() -> None:
        b = SshBackend(tmp_path)
        renter = asyncssh.generate_private_key("ssh-ed25519")
        conn = await b.provision(_task(renter), [])
        await b.teardown("H100-7")
        again = await b.provision(_task(renter), [], previous=conn)
        assert again["port"] == conn["port"]
        taken = await b.provision(_task(renter, lease="H100-9"), [], previous=conn)  # port in use: a new one
        assert taken["port"] != conn["port"]
        await b.close()

    asyncio.run(go())
