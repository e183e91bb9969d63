"""The ``ssh`` backend: one SSH server (asyncssh) per lease on the provider's host, admitting only
the renter's public key until the lease ends.

Each lease gets a listening port on ``bind`` (default 127.0.0.1; 0.0.0.0 for renters elsewhere)
and is advertised as ``advertise`` (``--ssh-host``, default the bind address).  The server:

- accepts public-key authentication with the renter's key and nothing else (no passwords, no
  other key, no agent or port forwarding); any user name is accepted and the connection
  advertises ``user: gpux``;
- runs what the client asks for — a command (``ssh host CMD``: ``/bin/sh -c CMD``) or a shell
  (``/bin/sh -i`` on a pseudo-terminal when the client asks for one) — as the agent's own OS user,
  in a per-lease directory ``STATE_DIR/leases/LEASE`` (also ``HOME``) that is deleted at teardown;
- gives those processes ``GPUX_LEASE``, ``GPUX_GPUS``, ``GPUX_END``, … and, when the agent assigns
  GPUs (``--gpus N``), ``CUDA_VISIBLE_DEVICES`` / ``GPUX_GPU_IDS``;
- offers SFTP (``scp``, ``sftp``) rooted in the lease's directory.

Teardown closes the listener and every session, and kills the lease's processes (SIGTERM, then
SIGKILL after a grace period).  The host key is generated once, in ``STATE_DIR/ssh_host_ed25519_key``,
so renters see the same host key for every lease of this agent.

The renter's commands run with the agent's privileges: this backend is for hosts the provider
trusts its renters with, or that are themselves contained (a VM, a container per agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import pty
import shutil
import signal
import struct
import termios
from pathlib import Path
from typing import Any

from agent.backend import BackendError, task_env
from agent.sshlib import asyncssh
from agent.tasks import ProvisionTask

log = logging.getLogger("gpux.agent.ssh")

HOST_KEY_FILE = "ssh_host_ed25519_key"
USER = "gpux"
KILL_GRACE_S = 1.0
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "LD_LIBRARY_PATH")  # of the agent's environment, to sessions


def load_host_key(state_dir: Path) -> asyncssh.SSHKey:
    """The agent's host key, generated (ed25519, mode 0600) on first use."""
    path = state_dir / HOST_KEY_FILE
    if path.exists():
        return asyncssh.read_private_key(str(path))
    state_dir.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="gpux-agent")
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    os.replace(tmp, path)
    return key


def parse_renter_key(line: str) -> asyncssh.SSHKey:
    """The renter's public key (an OpenSSH ``authorized_keys`` line); BackendError if unusable."""
    if not line.strip():
        raise BackendError("renter has no SSH key")
    try:
        return asyncssh.import_public_key(line.strip())
    except (asyncssh.KeyImportError, ValueError) as e:
        raise BackendError(f"the renter's SSH key cannot be read: {e}") from None


class _Lease:
    """One lease's listener, its connections and the processes its sessions run."""

    def __init__(self, task: ProvisionTask, key: asyncssh.SSHKey, env: dict[str, str], home: Path) -> None:
        self.task = task
        self.key = key
        self.env = env
        self.home = home
        self.acceptor: asyncssh.SSHAcceptor | None = None
        self.conns: set[asyncssh.SSHServerConnection] = set()
        self.pgids: set[int] = set()  # process groups of its sessions, ended at teardown
        self.closing = False


class _Server(asyncssh.SSHServer):
    """Public-key authentication with the renter's key only."""

    def __init__(self, lease: _Lease) -> None:
        self.lease = lease
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        if self.lease.closing:
            conn.abort()
            return
        self.conn = conn
        self.lease.conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.lease.conns.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return not self.lease.closing and key.public_data == self.lease.key.public_data


class SshBackend:
    name = "ssh"

    def __init__(self, state_dir: Path | str, bind: str = "127.0.0.1", advertise: str | None = None,
                 shell: str = "/bin/sh") -> None:
        self.state_dir = Path(state_dir)
        self.bind = bind
        self.advertise = advertise or (bind if bind not in ("0.0.0.0", "::", "") else "127.0.0.1")
        self.shell = shell
        self.host_key = load_host_key(self.state_dir)
        self.leases: dict[str, _Lease] = {}

    @property
    def host_key_line(self) -> str:
        """The public host key, for a renter's ``known_hosts``."""
        return self.host_key.export_public_key().decode().strip()

    async def provision(self, task: ProvisionTask, gpu_ids: list[int],
                        previous: dict[str, Any] | None = None) -> dict[str, Any]:
        key = parse_renter_key(task.ssh_public_key)
        if task.lease in self.leases:
            await self.teardown(task.lease)
        home = self.state_dir / "leases" / task.lease
        home.mkdir(parents=True, exist_ok=True)
        env = task_env(task, gpu_ids)
        env.pop("GPUX_SSH_PUBLIC_KEY", None)
        lease = _Lease(task, key, env, home)
        port = int((previous or {}).get("port", 0) or 0)
        try:
            lease.acceptor = await self._listen(lease, port)
        except OSError as e:
            if not port:
                raise BackendError(f"cannot listen on {self.bind}: {e.strerror or e}") from None
            log.warning("port %s of lease %s is taken (%s); a new port", port, task.lease, e)
            lease.acceptor = await self._listen(lease, 0)
        self.leases[task.lease] = lease
        return {"host": self.advertise, "port": lease.acceptor.get_port(), "user": USER,
                "host_key": self.host_key_line}

    async def _listen(self, lease: _Lease, port: int) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            self.bind, port, server_factory=lambda: _Server(lease), server_host_keys=[self.host_key],
            process_factory=lambda p: self._session(lease, p), encoding=None,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(lease.home).encode()),
            allow_scp=True, agent_forwarding=False, x11_forwarding=False, login_timeout=30,
            keepalive_interval=30)

    async def _session(self, lease: _Lease, process: asyncssh.SSHServerProcess) -> None:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}  # never the agent's GPUX_SECRET
        env.update(lease.env)
        env["HOME"] = str(lease.home)
        env["USER"] = env["LOGNAME"] = USER
        command = process.command
        rc = 255
        try:
            if process.term_type:
                env["TERM"] = process.term_type
                rc = await self._run_pty(lease, process, command, env)
            else:
                rc = await self._run_pipes(lease, process, command, env)
        except Exception as e:  # the session ends; the lease and the agent go on
            log.warning("session of lease %s failed: %s", lease.task.lease, e)
            with contextlib.suppress(Exception):
                process.stderr.write(f"gpux: {e}\n".encode())
        with contextlib.suppress(Exception):
            process.exit(rc if rc >= 0 else 128 - rc)

    def _argv(self, command: str | None, interactive: bool) -> list[str]:
        if command is not None:
            return [self.shell, "-c", command]
        return [self.shell, "-i"] if interactive else [self.shell]

    async def _spawn(self, lease: _Lease, argv: list[str], env: dict[str, str],
                     **kw: Any) -> asyncio.subprocess.Process:
        if lease.closing:
            raise BackendError("the lease has ended")
        proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=str(lease.home), start_new_session=True, **kw)
        lease.pgids.add(proc.pid)  # its own session and group: teardown ends all it started
        return proc

    async def _run_pipes(self, lease: _Lease, process: asyncssh.SSHServerProcess, command: str | None,
                         env: dict[str, str]) -> int:
        proc = await self._spawn(lease, self._argv(command, False), env, stdin=asyncio.subprocess.PIPE,
                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

        async def pump(src: asyncio.StreamReader, dst: Any) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

        async def feed() -> None:
            try:
                while data := await process.stdin.read(65536):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (asyncssh.Error, BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    proc.stdin.close()

        feeder = asyncio.create_task(feed())
        try:
            await asyncio.gather(pump(proc.stdout, process.stdout), pump(proc.stderr, process.stderr))
            return await proc.wait()
        finally:
            feeder.cancel()
            _hang_up(proc)

    async def _run_pty(self, lease: _Lease, process: asyncssh.SSHServerProcess, command: str | None,
                       env: dict[str, str]) -> int:
        master, slave = pty.openpty()
        cols, rows = process.term_size[:2]
        if cols and rows:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        try:
            proc = await self._spawn(lease, self._argv(command, True), env, stdin=slave, stdout=slave, stderr=slave,
                                     preexec_fn=_controlling_tty)
        finally:
            os.close(slave)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(master, 65536)
            except OSError as e:  # EIO: every holder of the terminal's other side is gone
                data = b""
                if e.errno != errno.EIO:
                    log.debug("pty read: %s", e)
            if data:
                process.stdout.write(data)
            elif not done.done():
                loop.remove_reader(master)
                done.set_result(None)

        async def feed() -> None:
            with contextlib.suppress(asyncssh.Error, OSError):
                while data := await process.stdin.read(65536):
                    os.write(master, data)

        loop.add_reader(master, readable)
        feeder = asyncio.create_task(feed())
        try:
            await done
            return await proc.wait()
        finally:
            feeder.cancel()
            loop.remove_reader(master)
            os.close(master)
            _hang_up(proc)

    async def teardown(self, lease_ref: str) -> None:
        lease = self.leases.pop(lease_ref, None)
        if lease is None:
            return
        lease.closing = True
        if lease.acceptor is not None:
            lease.acceptor.close()
        for conn in list(lease.conns):
            conn.close()
        await _end_groups(list(lease.pgids), KILL_GRACE_S)
        if lease.acceptor is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lease.acceptor.wait_closed(), 5)
        for conn in list(lease.conns):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 2)
        shutil.rmtree(lease.home, ignore_errors=True)

    async def close(self) -> None:
        await asyncio.gather(*(self.teardown(ref) for ref in list(self.leases)))


def _controlling_tty() -> None:
    """In the child, after setsid: the pseudo-terminal on stdin becomes its controlling terminal
    (job control, ^C)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _hang_up(proc: asyncio.subprocess.Process) -> None:
    """The session ended (the client went) while its command still runs: SIGHUP, as sshd does.
    What it started in the background (nohup) runs on until the lease ends."""
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGHUP)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a session's process group; False when it has no process left."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


async def _end_groups(pgids: list[int], grace: float) -> None:
    """SIGTERM every group, SIGKILL what is left after ``grace`` seconds."""
    alive = [g for g in pgids if _signal_group(g, signal.SIGTERM)]
    for _ in range(int(grace / 0.05)):
        if not alive:
            return
        await asyncio.sleep(0.05)
        alive = [g for g in alive if _signal_group(g, 0)]
    for g in alive:
        _signal_group(g, signal.SIGKILL)
