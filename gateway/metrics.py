"""/metrics: the exchange's counters and gauges in the Prometheus text format (0.0.4)."""

from __future__ import annotations

import time
from typing import Any


def _line(out: list[str], name: str, value: float | int, help_: str = "", kind: str = "") -> None:
    base = name.split("{", 1)[0]
    if help_:
        out.append(f"# HELP {base} {help_}")
        out.append(f"# TYPE {base} {kind or 'gauge'}")
    out.append(f"{name} {value}")


def render(gateway: Any) -> str:
    """Every metric, one per line; names start with ``gpux_``."""
    x = gateway.x
    out: list[str] = []
    _line(out, "gpux_up", 1, "1 while the exchange serves")
    _line(out, "gpux_uptime_seconds", round(time.time() - x.started_at, 3), "seconds since start")
    engine = x.engine
    if engine is not None:
        _line(out, "gpux_journal_seq", engine.seq, "last journal sequence number applied", "counter")
        out.append("# HELP gpux_resting_orders orders resting in each book")
        out.append("# TYPE gpux_resting_orders gauge")
        for name, book in engine.books.items():
            out.append(f'gpux_resting_orders{{class="{name}"}} {book.resting_orders()}')
        out.append("# HELP gpux_engine_time engine time of each book (UTC seconds)")
        out.append("# TYPE gpux_engine_time gauge")
        for name in engine.books:
            out.append(f'gpux_engine_time{{class="{name}"}} {engine.book_time(name)}')
        out.append("# HELP gpux_halted 1 while trading in the class is halted")
        out.append("# TYPE gpux_halted gauge")
        for name in engine.books:
            out.append(f'gpux_halted{{class="{name}"}} {int(name in engine.state.halted)}')
        _line(out, "gpux_book_seconds_total", round(engine.book_seconds, 6), "time spent inside the books",
              "counter")
        _line(out, "gpux_leases", len(engine.state.leases), "leases known (all states)")
    seq = x.sequencer
    if seq is not None:
        st = seq.stats
        _line(out, "gpux_batches_total", st.batches, "sequencer batches", "counter")
        _line(out, "gpux_commands_total", st.commands, "commands journaled and applied", "counter")
        _line(out, "gpux_fsyncs_total", st.fsyncs, "journal fsyncs (one per batch)", "counter")
        _line(out, "gpux_fsync_seconds_total", round(st.fsync_seconds, 6), "time waiting for fsync", "counter")
        _line(out, "gpux_fsync_busy_seconds_total", round(st.fsync_busy_seconds, 6), "time inside fsync",
              "counter")
        _line(out, "gpux_batch_seconds_total", round(st.batch_seconds, 6), "time spent in batches", "counter")
        _line(out, "gpux_batch_max", st.max_batch, "largest batch so far")
        out.append("# HELP gpux_rejected_pre_total requests refused by the sequencer before the journal")
        out.append("# TYPE gpux_rejected_pre_total counter")
        for code, n in sorted(st.rejected_pre.items()):
            out.append(f'gpux_rejected_pre_total{{code="{code}"}} {n}')
    link = getattr(x, "settlement", None)
    if link is not None:
        _line(out, "gpux_settlement_commits_total", link.batches, "ledger transactions of queued batches", "counter")
        _line(out, "gpux_settlement_seconds_total", round(link.seconds, 6), "time committing to the ledger",
              "counter")
        _line(out, "gpux_settlement_queued", len(link._queue), "durable batches not committed to the ledger yet")
        _line(out, "gpux_settlement_healthy", int(link.healthy), "0 while the ledger refuses a batch (see logs)")
    prov = getattr(x, "provisioning", None)
    if prov is not None:
        _line(out, "gpux_provisioning_tasks_total", prov.sent, "leases handed to providers' agents (R18)", "counter")
        _line(out, "gpux_provisioning_ready_total", prov.ready, "leases agents reported ready", "counter")
        _line(out, "gpux_provisioning_failed_total", prov.failed, "leases failed: by the agent or no answer in time",
              "counter")
    _line(out, "gpux_ws_sessions", len(gateway.all_sessions), "open WebSocket sessions")
    seen: set[str] = set()
    for name, n in sorted(gateway.metrics.items()):
        base = name.split("{", 1)[0]
        if base not in seen:
            seen.add(base)
            out.append(f"# TYPE gpux_{base} counter")
        out.append(f"gpux_{name} {n}")
    return "\n".join(out) + "\n"
