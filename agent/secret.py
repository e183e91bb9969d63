"""Keeping the provider's API secret out of what other processes can see of the agent.

The kernel shows a process's *initial* command line and environment (``/proc/PID/cmdline``, to
every user of the host, and ``/proc/PID/environ``, to its own uid and root) from the memory they
were passed in, whatever the process does to ``os.environ`` later.  ``hide_secret`` removes
``GPUX_SECRET`` from ``os.environ`` (so no child the agent starts inherits it) and overwrites the
secret in that memory (through ``/proc/self/mem``), so neither file shows it from then on.

This is a second line: what keeps a renter from the agent's environment and memory is that the
ssh backend runs renters under other uids (docs/agent.md).  The command line is the weak spot — any
user can read it, and it shows the secret until the agent has started — so pass the secret in
the environment (``GPUX_SECRET``), not with ``--secret``.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("gpux.agent")

SECRET_ENV = "GPUX_SECRET"
MIN_LEN = 8  # shorter strings are not hunted for in memory (a test's "s")


def _regions() -> list[tuple[str, int, int]]:
    """The initial command line's and environment's address ranges (/proc/self/stat, fields 48-51)."""
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # fields from the 3rd on
    arg_start, arg_end, env_start, env_end = (int(fields[n - 3]) for n in (48, 49, 50, 51))
    return [("command line", arg_start, arg_end), ("environment", env_start, env_end)]


def hide_secret(secret: str, env_var: str = SECRET_ENV) -> list[str]:
    """Take ``secret`` out of ``os.environ`` and overwrite it (with ``*``) where the kernel shows this
    process's initial command line and environment: a NUL-separated word that is the secret or ends
    with ``=`` and the secret (``--secret=S``, ``GPUX_SECRET=S``).  Returns where it was found."""
    if os.environ.get(env_var) == secret:
        del os.environ[env_var]
    if len(secret) < MIN_LEN:
        return []
    needle = secret.encode()
    found: list[str] = []
    try:
        regions = _regions()
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            for name, start, end in regions:
                mem.seek(start)
                data = mem.read(end - start)
                pos = 0
                for word in data.split(b"\0"):
                    if word == needle or word.endswith(b"=" + needle):
                        at = start + pos + len(word) - len(needle)
                        mem.seek(at)
                        mem.write(b"*" * len(needle))
                        if name not in found:
                            found.append(name)
                    pos += len(word) + 1
    except (OSError, ValueError, IndexError) as e:
        log.warning("could not hide the API secret from /proc/%d (%s): keep the agent's uid apart from "
                    "the renters' (docs/agent.md)", os.getpid(), e)
    if "command line" in found:
        log.warning("the API secret was on the agent's command line, which every user of this host can read "
                    "(ps, /proc/PID/cmdline) until the agent has started: pass it in GPUX_SECRET instead")
    return found
