"""The ``ssh`` backend: one SSH server (asyncssh) per lease on the provider's host, admitting only
the renter's public key until the lease ends.

Each lease gets a listening port on ``bind`` (default 127.0.0.1; 0.0.0.0 for renters elsewhere)
and is advertised as ``advertise`` (``--ssh-host``, default the bind address).  The server:

- accepts public-key authentication with the renter's key and nothing else (no passwords, no
  other key, no agent or port forwarding); any user name is accepted and the connection
  advertises ``user: gpux``;
- runs what the client asks for — a command (``ssh host CMD``: ``/bin/sh -c CMD``) or a shell
  (``/bin/sh -i`` on a pseudo-terminal when the client asks for one) — in a per-lease directory
  (also ``HOME``) that is deleted at teardown;
- gives those processes ``GPUX_LEASE``, ``GPUX_GPUS``, ``GPUX_END``, … and, when the agent assigns
  GPUs (``--gpus N``), ``CUDA_VISIBLE_DEVICES`` / ``GPUX_GPU_IDS``; nothing else of the agent's
  environment but ``PASSED_ENV``;
- offers SFTP (``scp``, ``sftp``) rooted in the lease's directory.

Isolation (the default; the agent must be root): each lease is its own unprivileged OS user,
``gpux-l<hash>`` (`LeaseUsers`), created at provisioning with no password, no login shell and no
home of its own in ``/etc/passwd``, and removed at teardown after every process it runs is killed
(``kill(-1)`` as that user: nothing it forked or detached survives).  Every session process, and
the SFTP server of a session (``agent/sftp_child.py``, a child process), runs as that user with
no supplementary group.  The lease's directory ``HOMES/LEASE`` is the user's, mode 0700;
``HOMES`` (default ``STATE_DIR-leases``) is 0711, so a lease cannot list the others; the state
directory (host key, leases.json) is 0700.  A renter's process cannot read the agent's files nor,
since the agent runs under another uid, its ``/proc/PID/environ``, memory or file descriptors.

Shared user (``shared_user=True``, env ``GPUX_AGENT_SHARED_USER=1``; the old behaviour, for an
agent that is not root): the renter's commands run as the agent's own OS user, which lets a renter read the agent's
files, environment and secret and the other leases' files.  Refused as root.

Teardown closes the listener and every session, and kills the lease's processes (SIGTERM, then
SIGKILL after a grace period).  The host key is generated once, in ``STATE_DIR/ssh_host_ed25519_key``,
so renters see the same host key for every lease of this agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import hashlib
import inspect
import logging
import os
import pty
import pwd
import shutil
import signal
import stat
import struct
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.backend import BackendError, task_env
from agent.sshlib import asyncssh
from agent.tasks import ProvisionTask

# asyncssh's own modules, loaded by `import asyncssh` (agent.sshlib, which quiets its import)
EXTENDED_DATA_STDERR: int = asyncssh.constants.EXTENDED_DATA_STDERR
MIN_SFTP_VERSION: int = asyncssh.sftp.MIN_SFTP_VERSION
SSHReader = asyncssh.stream.SSHReader
SSHWriter = asyncssh.stream.SSHWriter

log = logging.getLogger("gpux.agent.ssh")

HOST_KEY_FILE = "ssh_host_ed25519_key"
USER = "gpux"
KILL_GRACE_S = 1.0
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "LD_LIBRARY_PATH")  # of the agent's environment, to sessions
SHARED_USER_ENV = "GPUX_AGENT_SHARED_USER"  # "1": the shared-user mode (`gpux agent` reads it through here)
USER_PREFIX = "gpux-l"
USER_COMMENT = "gpux lease"  # the GECOS of every lease user: only such users are reused or removed
NOLOGIN = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/bin/false")
# world-writable places a lease user can leave files in; emptied of its files at teardown, since
# a later lease user may get the same uid
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
SFTP_CHILD = Path(__file__).with_name("sftp_child.py")
_KILL_AS_USER = """import os, sys
uid, gid, sig = map(int, sys.argv[1:4])
assert uid > 0 and gid > 0
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
assert os.getresuid() == (uid, uid, uid)
try:
    os.kill(-1, sig)
except ProcessLookupError:
    pass
"""  # kill(-1) as the lease user: every process it may signal (its own), not itself
_SYS_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}  # for useradd, userdel


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


def shared_user_default() -> bool:
    return os.environ.get(SHARED_USER_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class LeaseUser:
    """The unprivileged OS user a lease runs as."""

    name: str
    uid: int
    gid: int


def lease_user_name(state_dir: Path, lease: str) -> str:
    """``gpux-l`` and 10 hex digits of the agent's state directory and the lease: the same lease of
    the same agent is the same user after a restart; two agents on one host never share one."""
    digest = hashlib.sha256(f"{state_dir.resolve()}\0{lease}".encode()).hexdigest()
    return USER_PREFIX + digest[:10]


class LeaseUsers:
    """Creates and removes lease users (useradd, userdel), one at a time: they lock /etc/passwd."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    @staticmethod
    async def _run(*argv: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                    env=_SYS_ENV)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace").strip()

    async def create(self, name: str, lease: str) -> LeaseUser:
        async with self._lock:
            for attempt in range(20):
                existing = _lease_user(name)
                if existing is not None:
                    return existing  # the agent restarted without a teardown: the same user again
                rc, out = await self._run("useradd", "--no-create-home", "--home-dir", "/nonexistent",
                                          "--shell", NOLOGIN, "--user-group", "--comment",
                                          f"{USER_COMMENT} {lease}", name)
                if rc == 0:
                    break
                if rc == 9 and _lease_user(name) is None:  # taken by someone else's user
                    raise BackendError(f"cannot create the lease's user {name}: the name is taken")
                if rc not in (1, 9, 10) or attempt == 19:  # 1, 10: /etc/passwd or group locked by another
                    raise BackendError(f"cannot create the lease's user {name}: {out or f'useradd: status {rc}'}")
                await asyncio.sleep(0.1)
            user = _lease_user(name)
            if user is None:
                raise BackendError(f"cannot create the lease's user {name}: not found after useradd")
            return user

    async def remove(self, user: LeaseUser) -> None:
        async with self._lock:
            for attempt in range(20):
                if _lease_user(user.name) is None:
                    return
                rc, out = await self._run("userdel", *(("--force",) if attempt >= 10 else ()), user.name)
                if rc == 0:
                    return
                log.debug("userdel %s: %s (status %d)", user.name, out, rc)
                await asyncio.sleep(0.1)
            log.warning("could not remove the lease user %s: %s", user.name, out)


def _lease_user(name: str) -> LeaseUser | None:
    """The lease user of that name, None if there is none; BackendError if that name belongs to a
    user gpux did not create."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    if not pw.pw_gecos.startswith(USER_COMMENT) or pw.pw_uid == 0:
        raise BackendError(f"the user {name} exists and is not a gpux lease user")
    return LeaseUser(name, pw.pw_uid, pw.pw_gid)


def uid_processes(uid: int) -> list[int]:
    """The processes with ``uid`` as their real, effective or saved uid."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if uid in map(int, line.split()[1:4]):
                            pids.append(int(entry))
                        break
        except OSError:
            continue
    return pids


async def kill_user_processes(user: LeaseUser, grace: float) -> None:
    """SIGTERM to every process of ``user``, SIGKILL after ``grace`` seconds to what is left, again
    until none is left: sent as that user with ``kill(-1, sig)``, which reaches every process it
    may signal (all of its own, nothing else) — also those that left their session and group."""

    async def kill_all(sig: int) -> None:  # the agent's interpreter, started as root, drops to the user
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", _KILL_AS_USER, str(user.uid), str(user.gid), str(int(sig)),
            env={}, cwd="/",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await proc.wait()

    if not uid_processes(user.uid):
        return
    await kill_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and uid_processes(user.uid):
        await asyncio.sleep(0.05)
    for _ in range(50):
        if not uid_processes(user.uid):
            return
        await kill_all(signal.SIGKILL)
        await asyncio.sleep(0.02)
    log.warning("processes of the lease user %s survive: %s", user.name, uid_processes(user.uid))


def remove_user_files(uid: int, roots: tuple[str, ...] = SHARED_DIRS) -> None:
    """Delete what ``uid`` owns in the world-writable directories under ``roots`` (not following
    symbolic links, not leaving the root's filesystem)."""

    def sweep(path: str, dev: int) -> None:
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != dev:
                continue
            if st.st_uid == uid:
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
            elif stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002:
                sweep(e.path, dev)

    for root in roots:
        try:
            st = os.stat(root, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            sweep(root, st.st_dev)


def _unreachable_ancestor(path: Path) -> Path | None:
    """The first directory from / to ``path`` that other users cannot traverse (no o+x)."""
    for d in [*reversed(path.parents), path]:
        with contextlib.suppress(FileNotFoundError):
            if not os.stat(d).st_mode & 0o001:
                return d
    return None


class _Lease:
    """One lease's listener, its connections and the processes its sessions run."""

    def __init__(self, task: ProvisionTask, key: asyncssh.SSHKey, env: dict[str, str], home: Path,
                 user: LeaseUser | None) -> None:
        self.task = task
        self.key = key
        self.env = env
        self.home = home
        self.user = user  # None: the shared-user mode
        self.acceptor: asyncssh.SSHAcceptor | None = None
        self.conns: set[asyncssh.SSHServerConnection] = set()
        self.pgids: set[int] = set()  # process groups of its sessions, ended at teardown
        self.closing = False


class _LeaseProcess(asyncssh.SSHServerProcess):
    """A session whose ``sftp`` subsystem is a process like a command's (``sftp_child.py``, run as
    the lease user by ``SshBackend._session``) instead of asyncssh's SFTP server in the agent."""

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"

    def session_started(self) -> None:
        if self._chan.get_subsystem() != "sftp":
            super().session_started()
            return
        # what asyncssh's SSHServerStreamSession.session_started does for a command
        stdin = SSHReader[bytes](self, self._chan)
        stdout = SSHWriter[bytes](self, self._chan)
        stderr = SSHWriter[bytes](self, self._chan, EXTENDED_DATA_STDERR)
        handler = self._session_factory(stdin, stdout, stderr)  # type: ignore[arg-type]
        if inspect.isawaitable(handler) and self._conn is not None:
            self._conn.create_task(handler, stdin.logger)


class _Server(asyncssh.SSHServer):
    """Public-key authentication with the renter's key only."""

    def __init__(self, lease: _Lease, process_factory: Any = None) -> None:
        self.lease = lease
        self.conn: asyncssh.SSHServerConnection | None = None
        self.process_factory = process_factory  # isolated mode: sessions are _LeaseProcess

    def session_requested(self) -> Any:
        if self.process_factory is None:
            return False
        return _LeaseProcess(self.process_factory, None, MIN_SFTP_VERSION, False)

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
    """``shared_user``: run every lease as the agent's own user (None: env ``GPUX_AGENT_SHARED_USER``);
    otherwise the agent must be root.  ``homes``: where the leases' directories go (default
    ``STATE_DIR/leases`` when shared, else ``STATE_DIR-leases`` next to the state directory, which
    must not be inside the state directory: that one is 0700)."""

    name = "ssh"

    def __init__(self, state_dir: Path | str, bind: str = "127.0.0.1", advertise: str | None = None,
                 shell: str = "/bin/sh", shared_user: bool | None = None, homes: Path | str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.shared_user = shared_user_default() if shared_user is None else shared_user
        root = os.geteuid() == 0
        if self.shared_user and root:
            raise ValueError("the shared-user mode (--shared-user, GPUX_AGENT_SHARED_USER) would run the renters' "
                             "commands as root: run the agent as an unprivileged user for that mode, or leave it "
                             "off to give each lease its own OS user (docs/agent.md)")
        if not self.shared_user and not root:
            raise ValueError("the ssh backend runs each lease as its own OS user, which only root can create: "
                             "run the agent as root, or pass --shared-user (or set GPUX_AGENT_SHARED_USER=1) to "
                             "run every renter's commands as the agent's own user — renters can then read the "
                             "agent's files, its API secret and the other leases' files (docs/agent.md)")
        self.bind = bind
        self.advertise = advertise or (bind if bind not in ("0.0.0.0", "::", "") else "127.0.0.1")
        self.shell = shell
        self.users = LeaseUsers()
        if self.shared_user:
            self.homes = Path(homes) if homes is not None else self.state_dir / "leases"
        else:
            self._prepare_dirs(homes)
        self.host_key = load_host_key(self.state_dir)
        self.leases: dict[str, _Lease] = {}

    def _prepare_dirs(self, homes: Path | str | None) -> None:
        """The state directory 0700 (the agent's only), the leases' directories' parent 0711."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        state = self.state_dir.resolve()
        self.homes = Path(homes).resolve() if homes is not None else state.with_name(state.name + "-leases")
        if self.homes == state or state in self.homes.parents:
            raise ValueError(f"the leases' directories ({self.homes}) cannot be inside the agent's state "
                             f"directory ({state}), which only the agent may enter")
        self.homes.mkdir(parents=True, exist_ok=True)
        os.chown(self.homes, 0, 0)
        os.chmod(self.homes, 0o711)
        blocked = _unreachable_ancestor(self.homes)
        if blocked is not None:
            raise ValueError(f"the leases' directories are in {self.homes}, but {blocked} does not let other "
                             f"users through (mode {oct(os.stat(blocked).st_mode & 0o777)}): choose another "
                             f"place for them, or the state directory elsewhere")

    @property
    def host_key_line(self) -> str:
        """The public host key, for a renter's ``known_hosts``."""
        return self.host_key.export_public_key().decode().strip()

    async def provision(self, task: ProvisionTask, gpu_ids: list[int],
                        previous: dict[str, Any] | None = None) -> dict[str, Any]:
        key = parse_renter_key(task.ssh_public_key)
        if not task.lease or task.lease.startswith(".") or "/" in task.lease or "\0" in task.lease:
            raise BackendError(f"the lease reference {task.lease!r} cannot name a directory")  # "..": not as root
        if task.lease in self.leases:
            await self.teardown(task.lease)
        home = self.homes / task.lease
        user = None
        if self.shared_user:
            home.mkdir(parents=True, exist_ok=True)
        else:
            user = await self.users.create(lease_user_name(self.state_dir, task.lease), task.lease)
            try:
                self._make_home(home, user)
            except OSError as e:
                await self.users.remove(user)
                raise BackendError(f"cannot make the lease's directory: {e}") from None
        env = task_env(task, gpu_ids)
        env.pop("GPUX_SSH_PUBLIC_KEY", None)
        lease = _Lease(task, key, env, home, user)
        port = int((previous or {}).get("port", 0) or 0)
        try:
            try:
                lease.acceptor = await self._listen(lease, port)
            except OSError as e:
                if not port:
                    raise BackendError(f"cannot listen on {self.bind}: {e.strerror or e}") from None
                log.warning("port %s of lease %s is taken (%s); a new port", port, task.lease, e)
                lease.acceptor = await self._listen(lease, 0)
        except BaseException:
            await self._remove(lease)
            raise
        self.leases[task.lease] = lease
        return {"host": self.advertise, "port": lease.acceptor.get_port(), "user": USER,
                "host_key": self.host_key_line}

    @staticmethod
    def _make_home(home: Path, user: LeaseUser) -> None:
        """The lease's directory, the lease user's only (0700).  One left by an earlier run of the
        agent is kept if it is that user's, replaced otherwise."""
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(home)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != user.uid:
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(home)
                else:
                    home.unlink()
        home.mkdir(mode=0o700, exist_ok=True)
        os.chown(home, user.uid, user.gid, follow_symlinks=False)
        os.chmod(home, 0o700, follow_symlinks=False)

    async def _listen(self, lease: _Lease, port: int) -> asyncssh.SSHAcceptor:
        def session(p: asyncssh.SSHServerProcess) -> Any:
            return self._session(lease, p)

        common: dict[str, Any] = dict(server_host_keys=[self.host_key], encoding=None, agent_forwarding=False,
                                      x11_forwarding=False, login_timeout=30, keepalive_interval=30)
        if lease.user is None:  # shared: asyncssh's SFTP server and scp, in the agent
            return await asyncssh.listen(
                self.bind, port, server_factory=lambda: _Server(lease), process_factory=session,
                sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(lease.home).encode()),
                allow_scp=True, **common)
        # isolated: every session, sftp included, is a process of the lease user (_LeaseProcess);
        # `scp -t` is a command like any other (the host's scp, as the lease user)
        return await asyncssh.listen(self.bind, port, server_factory=lambda: _Server(lease, session),
                                     allow_scp=False, **common)

    def _env(self, lease: _Lease) -> dict[str, str]:
        """A session's whole environment, built from nothing: never anything of the agent's but
        ``PASSED_ENV`` (so never its GPUX_SECRET)."""
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.update(lease.env)
        env["HOME"] = str(lease.home)
        env["USER"] = env["LOGNAME"] = lease.user.name if lease.user is not None else USER
        env["SHELL"] = self.shell
        return env

    async def _session(self, lease: _Lease, process: asyncssh.SSHServerProcess) -> None:
        env = self._env(lease)
        command = process.command
        rc = 255
        try:
            if process.subsystem == "sftp" and lease.user is not None:
                user, client = lease.user, str(process.get_extra_info("client_version", "") or "")
                argv = [sys.executable, "-I", str(SFTP_CHILD), str(lease.home), str(user.uid), str(user.gid), client]
                rc = await self._run_pipes(lease, process, argv, {}, drops_itself=True)
            elif process.subsystem:
                process.stderr.write(f"gpux: no subsystem {process.subsystem}\n".encode())
                rc = 1
            elif process.term_type:
                env["TERM"] = process.term_type
                rc = await self._run_pty(lease, process, command, env)
            else:
                rc = await self._run_pipes(lease, process, self._argv(command, False), env)
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

    async def _spawn(self, lease: _Lease, argv: list[str], env: dict[str, str], drops_itself: bool = False,
                     **kw: Any) -> asyncio.subprocess.Process:
        """``drops_itself``: the program becomes the lease user itself before it reads its input
        (sftp_child.py); otherwise it is started as the lease user."""
        if lease.closing:
            raise BackendError("the lease has ended")
        if lease.user is not None and not drops_itself:  # the lease's user, its group, no other group
            kw.update(user=lease.user.uid, group=lease.user.gid, extra_groups=[])
        proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=str(lease.home), start_new_session=True, **kw)
        lease.pgids.add(proc.pid)  # its own session and group: teardown ends all it started
        return proc

    async def _run_pipes(self, lease: _Lease, process: asyncssh.SSHServerProcess, argv: list[str],
                         env: dict[str, str], drops_itself: bool = False) -> int:
        proc = await self._spawn(lease, argv, env, drops_itself, stdin=asyncio.subprocess.PIPE,
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
        if lease.user is not None:  # the terminal is the lease user's, as sshd does it (group tty, 0620)
            os.fchown(slave, lease.user.uid, _tty_gid())
            os.fchmod(slave, 0o620)
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
        await self._remove(lease)

    async def _remove(self, lease: _Lease) -> None:
        """The lease's processes, files and user."""
        lease.closing = True
        if lease.acceptor is not None:
            lease.acceptor.close()
        if lease.user is None:
            shutil.rmtree(lease.home, ignore_errors=True)
            return
        user = lease.user
        await kill_user_processes(user, KILL_GRACE_S)  # also what left the sessions' process groups
        await asyncio.to_thread(shutil.rmtree, lease.home, True)
        await asyncio.to_thread(remove_user_files, user.uid)
        await self.users.remove(user)

    async def close(self) -> None:
        await asyncio.gather(*(self.teardown(ref) for ref in list(self.leases)))


def _tty_gid() -> int:
    try:
        return grp.getgrnam("tty").gr_gid
    except KeyError:
        return 0


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
