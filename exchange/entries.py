"""Journal entries: what the sequencer writes to the journal and every replica applies.

An entry is a msgspec record, encoded into one journal payload:

* ``Cmd(book, rec, coid)`` — one COMMAND_DTYPE record for a book (clock commands too) and the
  client order id it carried;
* ``Admin(op, book)`` — halt or resume a class;
* ``Prov(book, trade_id, ready, ...)`` — a provider agent's answer to a provisioning task (R18);
* ``Fund(op, account, amount, ref, time)`` — a deposit or a withdrawal (money in the core:
  `exchange.money`).

    payload = encode_entry(Cmd("H100", rec.tobytes(), "my-coid"))
    entry = decode_entry(payload)
"""

from __future__ import annotations

import msgspec


class Cmd(msgspec.Struct, array_like=True, tag=1):
    book: str
    rec: bytes  # one COMMAND_DTYPE record
    coid: str = ""


class Admin(msgspec.Struct, array_like=True, tag=2):
    op: str  # "halt" | "resume"
    book: str


class Prov(msgspec.Struct, array_like=True, tag=3):
    """A provider agent's answer to a provisioning task (R18): ready (metering from ``time``)
    or failed.  Journaled like a command, so the ledger replays exactly from the journal; the
    books do not see it."""

    book: str
    trade_id: int
    ready: bool
    time: int  # engine time of the answer
    after: int  # the class's last event seq when it was journaled (the lease's trade is at or before it)
    connection: str = ""  # JSON object: how the renter connects
    reason: str = ""  # why it failed


class Fund(msgspec.Struct, array_like=True, tag=4):
    """Money into or out of an account's available balance.  ``ref`` names it once for
    ever: ``accounts:{row}`` for a deposit request of the account store (a repeat is applied
    once), ``journal:{seq}`` for a withdrawal; the ledger's transfer id is ``{op}:{ref}``."""

    op: str  # "deposit" | "withdraw"
    account: int
    amount: int  # µ$, > 0
    ref: str
    time: int  # wall-clock seconds when it was journaled


Entry = Cmd | Admin | Prov | Fund
_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(Entry)


def encode_entry(entry: Entry) -> bytes:
    return _entry_encoder.encode(entry)


def decode_entry(payload: bytes) -> Entry:
    return _entry_decoder.decode(payload)


_entries_decoder = msgspec.msgpack.Decoder(list[Entry])


def decode_entries(payloads: list[bytes]) -> list[Entry]:
    """`decode_entry` of each payload, in one call (replay: a chunk of the journal at a time)."""
    n = len(payloads)
    head = bytes([0x90 | n]) if n < 16 else (b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16
                                             else b"\xdd" + n.to_bytes(4, "big"))
    return _entries_decoder.decode(head + b"".join(payloads))
