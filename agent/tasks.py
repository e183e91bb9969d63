"""Wire types of the provider agent: the provisioning tasks the exchange sends (R18) and the
answers the agent gives, as msgspec Structs.

Decoding *is* validation: a task that does not fit is logged with msgspec's sentence (which
names the field) and skipped; it never reaches a backend.  Unknown fields are allowed so that
the exchange can add some without breaking agents already deployed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

LeaseRef = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Seconds = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Gpus = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


class ProvisionTask(msgspec.Struct, tag_field="task", tag="provision", kw_only=True):
    """Provision ``lease``: ``gpus`` GPUs of ``class`` for ``renter`` over [start, end)."""

    lease: LeaseRef
    gpu_class: str = msgspec.field(name="class", default="")
    trade_id: int = 0
    kind: Literal["spot", "on_demand", "reserved"] = "on_demand"
    gpus: Gpus
    start: Seconds = 0
    end: Seconds
    deadline: Seconds = 0
    renter: int = 0
    ssh_public_key: str = ""


class EndTask(msgspec.Struct, tag_field="task", tag="end", kw_only=True):
    """The lease's end moved (preemption notice R12, release) or it failed: tear down at ``end``
    (at once when ``reason`` is ``failed``)."""

    lease: LeaseRef
    gpu_class: str = msgspec.field(name="class", default="")
    trade_id: int = 0
    end: Seconds = 0
    reason: str = ""


Task = ProvisionTask | EndTask

_enc = msgspec.json.Encoder()


def decode_task(item: Any) -> Task:
    """One item of a ``provisioning`` message or of ``GET /v1/provisioning``; ValueError names
    what is wrong with it."""
    try:
        return msgspec.convert(item, Task)
    except msgspec.ValidationError as e:
        raise ValueError(f"bad provisioning task: {e}") from None


def task_json(task: Task) -> bytes:
    return _enc.encode(task)


def task_dict(task: Task) -> dict[str, Any]:
    return msgspec.to_builtins(task)

