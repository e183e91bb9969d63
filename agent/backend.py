"""What every provisioning backend offers (ssh, command, kubernetes), the error that fails a
lease, and the agent's allocator of the provider's GPU ids.

A backend turns a provision task into something the renter can log into and answers with the
connection (``{"host", "port", "user", ...}``: strings and integers); ``teardown`` removes it.
A ``BackendError`` fails the lease with its sentence as the reason; any other exception does
too, with the exception's text.
"""

from __future__ import annotations

from typing import Any, Protocol

from agent.tasks import ProvisionTask


class BackendError(Exception):
    """The lease cannot be provisioned; the message is the reason the renter is told."""


class Backend(Protocol):
    name: str

    async def provision(self, task: ProvisionTask, gpu_ids: list[int]) -> dict[str, Any]:
        """Make the lease usable; return its connection.  ``gpu_ids``: the provider's GPUs for it
        (empty when the agent does not assign GPUs, ``--gpus 0``)."""
        ...

    async def teardown(self, lease: str) -> None:
        """Remove everything of the lease; a lease that is unknown or already gone is not an error."""
        ...

    async def close(self) -> None:
        """The agent stops: release what the backend holds beyond its leases."""
        ...


class GpuAllocator:
    """The provider's GPU ids ``0..total-1`` handed to leases.  A lease holds its ids until its
    end; a lease starting at S may take ids of a lease that ends at or before S (the preempted
    spot lease a firm one replaces, R12), since that one is torn down at its end."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held: dict[str, tuple[list[int], int]] = {}  # lease -> (ids, end)

    def allocate(self, lease: str, gpus: int, start: int, end: int, now: int,
                 prefer: list[int] | None = None) -> list[int]:
        """Hold ``gpus`` ids for ``lease`` until ``end`` (its current ones if it has some; ``prefer``
        if they are free: the ids it had before the agent restarted); [] when the agent assigns none
        (total 0); BackendError when too few are free."""
        if self.total <= 0:
            return []
        if lease in self.held:
            return self.held[lease][0]
        at = max(start, now)
        busy = {i for ids, end in self.held.values() if end > at for i in ids}
        free = [i for i in range(self.total) if i not in busy]
        if prefer and all(i in free for i in prefer) and len(prefer) == gpus:
            free = prefer + [i for i in free if i not in prefer]
        if len(free) < gpus:
            raise BackendError(f"not enough free GPUs on this host: the lease needs {gpus}, "
                               f"{len(free)} of {self.total} are free")
        self.held[lease] = (free[:gpus], end)
        return free[:gpus]

    def free_at(self, gpus: int, at: int) -> int | None:
        """The earliest time from ``at`` on at which ``gpus`` ids are free, as the leases holding
        them end (a firm lease waits for the spot lease it preempted, R12); None if never."""
        if gpus > self.total:
            return None
        ends = sorted(end for ids, end in self.held.values() if end > at for _ in ids)
        need = len(ends) - (self.total - gpus)  # held ids that must come free first
        return at if need <= 0 else ends[need - 1]

    def move_end(self, lease: str, end: int) -> None:
        if lease in self.held:
            self.held[lease] = (self.held[lease][0], end)

    def release(self, lease: str) -> None:
        self.held.pop(lease, None)


def task_env(task: ProvisionTask, gpu_ids: list[int]) -> dict[str, str]:
    """The environment a lease's processes (or a provider's scripts) get."""
    env = {"GPUX_LEASE": task.lease, "GPUX_CLASS": task.gpu_class, "GPUX_GPUS": str(task.gpus),
           "GPUX_KIND": task.kind, "GPUX_START": str(task.start), "GPUX_END": str(task.end),
           "GPUX_TRADE_ID": str(task.trade_id), "GPUX_RENTER": str(task.renter),
           "GPUX_SSH_PUBLIC_KEY": task.ssh_public_key}
    if gpu_ids:
        env["GPUX_GPU_IDS"] = env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
    return env
