"""The ``command`` backend: the provider's own scripts provision and tear down leases.

``--provision-cmd CMD`` runs (``/bin/sh -c CMD``) once per lease with the task in its environment
— ``GPUX_LEASE``, ``GPUX_CLASS``, ``GPUX_GPUS``, ``GPUX_KIND``, ``GPUX_START``, ``GPUX_END``,
``GPUX_TRADE_ID``, ``GPUX_RENTER``, ``GPUX_SSH_PUBLIC_KEY`` and, when the agent assigns GPUs,
``GPUX_GPU_IDS`` / ``CUDA_VISIBLE_DEVICES`` — and the task as JSON on stdin.

- exit 0 and a JSON object on stdout: the lease is ready, that object is the connection the renter
  gets (``{"host": ..., "port": ..., "user": ...}``; strings and integers);
- any other exit status, or stdout that is not a JSON object: the lease fails, with the last line
  of stderr (or what was wrong with stdout) as the reason;
- still running after ``timeout`` seconds: its process group is killed and the lease fails.

``--teardown-cmd CMD`` runs at the lease's end with the same environment plus ``GPUX_CONNECTION``
(the JSON the provision command printed) and the task JSON on stdin.  Its failure is logged;
the lease is over either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from typing import Any

from agent.backend import BackendError, task_env
from agent.tasks import ProvisionTask, task_json

log = logging.getLogger("gpux.agent.command")

MAX_OUTPUT = 1 << 20


class CommandBackend:
    name = "command"

    def __init__(self, provision_cmd: str, teardown_cmd: str | None = None, timeout: float = 300.0,
                 shell: str = "/bin/sh") -> None:
        self.provision_cmd = provision_cmd
        self.teardown_cmd = teardown_cmd
        self.timeout = timeout
        self.shell = shell
        self.leases: dict[str, tuple[ProvisionTask, list[int], dict[str, Any]]] = {}

    async def provision(self, task: ProvisionTask, gpu_ids: list[int],
                        previous: dict[str, Any] | None = None) -> dict[str, Any]:
        rc, out, err = await self._run(self.provision_cmd, task_env(task, gpu_ids), task_json(task), "provision")
        if rc != 0:
            raise BackendError(_last_line(err) or f"the provision command exited with status {rc}")
        try:
            conn = json.loads(out or b"null")
        except ValueError as e:
            raise BackendError(f"the provision command printed no JSON object: {e}") from None
        if not isinstance(conn, dict):
            raise BackendError("the provision command printed no JSON object")
        bad = [k for k, v in conn.items() if not isinstance(v, str | int) or isinstance(v, bool)]
        if bad:
            raise BackendError(f"connection fields must be strings or integers: {', '.join(map(str, bad))}")
        self.leases[task.lease] = (task, gpu_ids, conn)
        return conn

    async def teardown(self, lease: str) -> None:
        entry = self.leases.pop(lease, None)
        if entry is None or not self.teardown_cmd:
            return
        task, gpu_ids, conn = entry
        env = task_env(task, gpu_ids)
        env["GPUX_CONNECTION"] = json.dumps(conn)
        try:
            rc, _, err = await self._run(self.teardown_cmd, env, task_json(task), "teardown")
        except BackendError as e:
            log.warning("teardown of lease %s: %s", lease, e)
            return
        if rc != 0:
            log.warning("teardown command of lease %s exited with %s: %s", lease, rc, _last_line(err))

    async def close(self) -> None:
        await asyncio.gather(*(self.teardown(lease) for lease in list(self.leases)))

    async def _run(self, cmd: str, task_vars: dict[str, str], stdin: bytes, what: str) -> tuple[int, bytes, bytes]:
        env = dict(os.environ)
        env.update(task_vars)
        proc = await asyncio.create_subprocess_exec(
            self.shell, "-c", cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise BackendError(f"the {what} command did not finish within {self.timeout:g} s") from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        return proc.returncode or 0, out[:MAX_OUTPUT], err[-MAX_OUTPUT:]


def _last_line(err: bytes) -> str:
    lines = [ln.strip() for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""
