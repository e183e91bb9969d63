"""Issue 17, finding 8: a renter cannot read the provider's secret, the agent's files or another
lease's.  The real ``gpux agent --backend ssh`` (a process of its own, its API secret in its
initial environment) serves two leases; renter A logs in over SSH and tries to read the agent's
environment, state directory and host key, lease B's directory (by shell and by SFTP, also through
symbolic links) and to find the secret in any process it can see — every try fails — while its
own lease works.  Needs root (a user per lease): skipped otherwise, except on CI."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest
from test_agent_runner import KEY, SECRET, login, provision, serving
from test_agent_ssh import _task, lease_homes, need_root

from agent.ssh import SshBackend, lease_user_name, uid_processes
from agent.sshlib import asyncssh

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parent.parent


async def _fails(c: asyncssh.SSHClientConnection, command: str) -> str:
    """Run ``command`` in the lease; it must fail and show nothing of the secret."""
    r = await c.run(command)
    out = f"{r.stdout}{r.stderr}"
    assert r.exit_status != 0, f"{command!r} succeeded in the lease: {out!r}"
    assert SECRET not in out
    return out


def test_a_renter_cannot_read_the_agent_its_secret_or_another_lease(tmp_path: Path) -> None:
    need_root()
    base = Path(tempfile.mkdtemp(prefix="gpux-test-iso-", dir="/tmp"))
    os.chmod(base, 0o755)
    state, homes = base / "state", base / "state-leases"  # the default place of the leases' directories
    renter_a = asyncssh.generate_private_key("ssh-ed25519")
    renter_b = asyncssh.generate_private_key("ssh-ed25519")

    async def go() -> None:
        async with serving() as px:
            px.outstanding["H100-1"] = provision("H100-1", renter_a, gpus=1)
            px.outstanding["H100-2"] = provision("H100-2", renter_b, gpus=1)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GPUX_KEY": KEY, "GPUX_SECRET": SECRET}
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", "agent", "--url", px.url, "--backend", "ssh",
                "--state-dir", str(state), "--gpus", "2", cwd=str(REPO), env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            try:
                a = await px.wait_answer("H100-1", timeout=60)
                b = await px.wait_answer("H100-2", timeout=60)
                assert a["status"] == b["status"] == "ready", (a, b)
                async with await login(b["connection"], renter_b) as cb:
                    r = await cb.run("echo private > $HOME/b.txt && echo $HOME")
                    assert r.exit_status == 0, r.stderr
                    home_b = r.stdout.strip()
                    assert home_b == str(homes / "H100-2")
                async with await login(a["connection"], renter_a) as c:
                    await _check_from_inside(c, agent.pid, state, homes, home_b)
            finally:
                agent.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(agent.communicate(), 60)
            assert agent.returncode == 0, err.decode()[-2000:]
            assert SECRET.encode() not in err
        # the graceful stop removed the leases' users and directories
        for lease in ("H100-1", "H100-2"):
            with pytest.raises(KeyError):
                pwd.getpwnam(lease_user_name(state, lease))
        assert not list(homes.iterdir())

    try:
        asyncio.run(go())
    finally:
        gen = lease_homes()  # removes lease users a failure left behind
        next(gen)
        next(gen, None)
        shutil.rmtree(base, ignore_errors=True)


async def _check_from_inside(c: asyncssh.SSHClientConnection, agent_pid: int, state: Path, homes: Path,
                             home_b: str) -> None:
    # the renter's own lease works: its own user, its directory, the lease's variables
    r = await c.run("id -u; id -G; echo $HOME; pwd; echo $GPUX_LEASE $GPUX_GPUS $CUDA_VISIBLE_DEVICES;"
                    " echo hi > $HOME/a.txt && cat $HOME/a.txt; env")
    assert r.exit_status == 0, r.stderr
    lines = r.stdout.splitlines()
    uid = int(lines[0])
    assert uid != 0 and uid != os.geteuid() and lines[1].split() == [str(pwd.getpwuid(uid).pw_gid)]
    assert lines[2] == lines[3] == str(homes / "H100-1")
    assert lines[4] == "H100-1 1 0" and lines[5] == "hi"
    assert "GPUX_SECRET" not in r.stdout and SECRET not in r.stdout and "GPUX_KEY" not in r.stdout
    # the agent's environment, memory and descriptors: another uid, so no ptrace access; and the
    # agent has overwritten the secret in its initial environment anyway (agent/secret.py)
    assert SECRET.encode() not in Path(f"/proc/{agent_pid}/environ").read_bytes()
    assert b"GPUX_SECRET=*****" in Path(f"/proc/{agent_pid}/environ").read_bytes()
    await _fails(c, f"cat /proc/{agent_pid}/environ")
    await _fails(c, f"cat /proc/{agent_pid}/mem")
    await _fails(c, f"ls /proc/{agent_pid}/fd")
    # the secret in no process the renter can inspect (environments and command lines)
    # (the pattern in a file, in two halves on printf's command line: the search itself must not hold it)
    half = len(SECRET) // 2
    r = await c.run(f"printf %s%s {SECRET[:half]} {SECRET[half:]} > $HOME/pattern; "
                    "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; done"
                    " | grep -c -F -f $HOME/pattern")
    assert r.stdout.strip() == "0", r.stdout
    # the agent's state directory, host key and leases.json
    await _fails(c, f"ls {state}")
    await _fails(c, f"cat {state}/ssh_host_ed25519_key")
    await _fails(c, f"cat {state}/leases.json")
    # the other lease: not listed, not readable, not writable
    await _fails(c, f"ls {homes}")
    await _fails(c, f"ls {home_b}")
    await _fails(c, f"cat {home_b}/b.txt")
    await _fails(c, f"echo x > {home_b}/x.txt")
    # nor through SFTP, with absolute paths or symbolic links made in the lease
    r = await c.run(f"ln -s {state}/ssh_host_ed25519_key $HOME/hostkey && ln -s {home_b}/b.txt $HOME/b-link")
    assert r.exit_status == 0, r.stderr
    async with c.start_sftp_client() as sftp:
        for path in ("hostkey", "b-link", f"{state}/ssh_host_ed25519_key", f"{home_b}/b.txt",
                     f"/proc/{agent_pid}/environ", "../H100-2/b.txt"):
            with pytest.raises(asyncssh.SFTPError):
                async with sftp.open(path, "rb") as f:
                    await f.read()
        async with sftp.open("up.txt", "w") as f:  # its own directory works
            await f.write("uploaded")
        async with sftp.open("a.txt") as f:
            assert await f.read() == "hi\n"
    assert (homes / "H100-1" / "up.txt").stat().st_uid == uid  # the file is the renter's, not root's
    # not root anywhere: no way back up
    await _fails(c, "cat /etc/shadow")


def test_teardown_kills_what_escaped_and_removes_the_user_and_its_files(tmp_path: Path) -> None:
    need_root()
    gen = lease_homes()
    homes = next(gen)

    async def go() -> None:
        b = SshBackend(tmp_path, homes=homes)
        renter = asyncssh.generate_private_key("ssh-ed25519")
        conn = await b.provision(_task(renter), [])
        user = b.leases["H100-7"].user
        assert user is not None and pwd.getpwnam(user.name).pw_uid == user.uid
        assert oct(os.stat(tmp_path).st_mode & 0o777) == "0o700"  # the state directory
        assert oct(os.stat(homes).st_mode & 0o777) == "0o711"
        st = os.stat(homes / "H100-7")
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (user.uid, "0o700")
        marker = f"/tmp/gpux-test-left-{user.name}"
        async with await login(conn, renter) as c:
            # a process that leaves its session and process group, and a file outside the lease's directory
            r = await c.run(f"setsid sleep 300 < /dev/null > /dev/null 2>&1 & echo x > {marker}; "
                            f"mkdir -p /dev/shm/{user.name}")
            assert r.exit_status == 0, r.stderr
        for _ in range(100):
            if uid_processes(user.uid):
                break
            await asyncio.sleep(0.05)
        assert uid_processes(user.uid), "the escaped process is not running"
        await b.teardown("H100-7")
        assert uid_processes(user.uid) == []
        assert not os.path.exists(marker) and not os.path.exists(f"/dev/shm/{user.name}")
        assert not (homes / "H100-7").exists()
        with pytest.raises(KeyError):
            pwd.getpwnam(user.name)
        await b.close()

    try:
        asyncio.run(go())
    finally:
        next(gen, None)


def _backend_as(uid: int, state: str, env: dict[str, str]) -> tuple[int, str]:
    """Construct SshBackend in a process of ``uid``, not root: started as root (the interpreter may
    be where only root can read it), it drops to ``uid`` for good once the modules are loaded."""
    import subprocess

    code = ("import os, sys\nfrom agent.ssh import SshBackend\n"
            f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
            "assert os.geteuid() != 0\n"
            f"SshBackend({state!r}); print('constructed')")
    p = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env={"PATH": "/usr/bin:/bin", **env},
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def test_not_root_is_refused_unless_the_shared_user_mode_is_asked_for(tmp_path: Path) -> None:
    need_root()
    with pytest.raises(ValueError, match="as root"):  # the shared mode as root would run renters as root
        SshBackend(tmp_path, shared_user=True)
    nobody = pwd.getpwnam("nobody").pw_uid
    state = tempfile.mkdtemp(prefix="gpux-test-nobody-", dir="/tmp")
    os.chown(state, nobody, nobody)
    try:
        rc, out = _backend_as(nobody, state, {})
        assert rc != 0 and "GPUX_AGENT_SHARED_USER=1" in out and "only root can create" in out, out
        assert not os.path.exists(os.path.join(state, "ssh_host_ed25519_key"))
        rc, out = _backend_as(nobody, state, {"GPUX_AGENT_SHARED_USER": "1"})
        assert rc == 0 and "constructed" in out, out
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_the_leases_directories_must_be_reachable_and_outside_the_state_directory(tmp_path: Path) -> None:
    need_root()
    # the leases' directories under pytest's 0700 tmp directory could not be entered by lease users
    with pytest.raises(ValueError, match="does not let other users through"):
        SshBackend(tmp_path / "state")
    with pytest.raises(ValueError, match="cannot be inside"):
        SshBackend(tmp_path / "state", homes=tmp_path / "state" / "leases")


def test_the_agent_hides_its_secret_from_proc_and_from_its_children() -> None:
    """Not root needed: the agent overwrites the secret in its initial command line and environment
    (what /proc/PID/cmdline and environ show) and takes it out of os.environ."""
    import subprocess

    secret = "s3cr3t-" + "9" * 20
    code = ("import os, subprocess, sys\nfrom agent.secret import hide_secret\n"
            "print(hide_secret(sys.argv[2]))\n"
            "print(subprocess.run(['sh', '-c', 'echo ${GPUX_SECRET-unset}'], capture_output=True, text=True).stdout)\n"
            "sys.stdout.flush()\nsys.stdin.read()\n")
    p = subprocess.Popen([sys.executable, "-c", code, f"--secret={secret}", secret], cwd=str(REPO),
                         env={"PATH": "/usr/bin:/bin", "GPUX_SECRET": secret}, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "['command line', 'environment']"
        assert p.stdout.readline().strip() == "unset"  # a child of the agent does not inherit it
        cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{p.pid}/environ").read_bytes()
        assert secret.encode() not in cmdline and secret.encode() not in environ
        assert b"--secret=*" in cmdline and b"GPUX_SECRET=*" in environ
    finally:
        _, err = p.communicate("", timeout=30)
    assert "command line" in err  # warned: pass it in GPUX_SECRET instead
