"""The ssh backend's SFTP server for one session, run as the lease's own OS user.

    python -I agent/sftp_child.py HOME UID GID CLIENT_VERSION      # SFTP on stdin/stdout

The agent (root) starts this script with an empty environment and pipes the session's ``sftp``
subsystem to it.  It loads Python and asyncssh as root (the agent's interpreter may be where no
other user can read it, e.g. under /root), then, before it reads a byte of the session, drops to
the lease user for good (no supplementary groups, that gid, that uid: real, effective and saved)
and checks that it cannot come back.  Every file operation then has the renter's rights and no
more: it reaches what the renter's own shell reaches, never the agent's files.  Paths are shown
rooted in HOME (asyncssh's ``chroot``, a view, not the boundary: the uid is).  It imports nothing
of gpux, only asyncssh, hence ``-I`` (no environment, no current directory on the path).
"""

from __future__ import annotations

import asyncio
import encodings.idna  # noqa: F401  # what asyncssh may import late, imported while still root
import logging
import os
import sys
import warnings
from typing import Any

with warnings.catch_warnings():  # as agent/sshlib.py: no DSA deprecation lines on the session's stderr
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh
    import asyncssh.sftp
from asyncssh.logging import logger as ssh_logger
from asyncssh.sftp import SFTPServerHandler


class _Channel:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()


class _Reader:
    """What asyncssh's SFTP handler reads through: stdin."""

    def __init__(self, reader: asyncio.StreamReader, client_version: str) -> None:
        self._reader = reader
        self._extra = {"client_version": client_version}
        self.logger = ssh_logger

    async def readexactly(self, n: int) -> bytes:
        return await self._reader.readexactly(n)  # IncompleteReadError is an EOFError: the session ends

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)


class _Writer:
    """What it writes through: stdout."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.channel = _Channel(writer)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def write_eof(self) -> None:
        if self._writer.can_write_eof():
            self._writer.write_eof()

    def close(self) -> None:
        self._writer.close()


async def serve(home: str, client_version: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    server = asyncssh.SFTPServer(None, chroot=home.encode())  # type: ignore[arg-type]  # no channel here
    handler = SFTPServerHandler(server, _Reader(reader, client_version), _Writer(writer), 3)  # type: ignore[arg-type]
    await handler.run()


def drop_to(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good; SystemExit if that is not what happened."""
    if uid <= 0 or gid <= 0:
        raise SystemExit("sftp_child: refusing to serve as root")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise SystemExit("sftp_child: could not drop privileges")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SystemExit("sftp_child: could regain root")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    home, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    client_version = sys.argv[4] if len(sys.argv) > 4 else ""
    drop_to(uid, gid)
    os.chdir(home)
    asyncio.run(serve(home, client_version))


if __name__ == "__main__":
    main()
