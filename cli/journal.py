"""`gpux journal`: check the journal and the snapshots of a data directory, copy out what can be
read of a damaged journal (exchange/integrity.py, docs/operations.md).

    gpux journal check DATA [--config FILE.toml] [--quiet]
        every segment (every record's CRC, names, continuity) and every snapshot (it restores);
        exit 0 when all is good, 1 with one line per problem on stderr
    gpux journal salvage DATA OUT
        every intact record, those after a damaged one too, into a new journal directory OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _check(args: argparse.Namespace) -> int:
    from exchange.config import load_config
    from exchange.integrity import check

    data = Path(args.data_dir)
    if not data.is_dir():
        print(f"gpux: error: {data} is not a directory (give the exchange's data directory)", file=sys.stderr)
        return 2
    cfg = load_config(args.config).with_(data_dir=str(data)) if args.config else None
    res = check(data, cfg)
    if not args.quiet:
        for note in res.notes:
            print(note)
    for problem in res.problems:
        print(problem, file=sys.stderr)
    span = f"seqs {res.first_seq}-{res.last_seq}" if res.last_seq is not None else "no records"
    summary = (f"{res.segments} segment(s), {res.records} record(s) ({span}), {res.snapshots} snapshot(s): "
               + ("all good" if res.ok else f"{len(res.problems)} problem(s)"))
    print(summary, file=sys.stdout if res.ok else sys.stderr)
    return 0 if res.ok else 1


def _salvage(args: argparse.Namespace) -> int:
    from exchange.integrity import SalvageError, salvage

    src = Path(args.data_dir) / "journal"
    if not src.is_dir():
        print(f"gpux: error: {src} is not a directory (give the exchange's data directory)", file=sys.stderr)
        return 2
    try:
        rep = salvage(src, Path(args.out))
    except SalvageError as e:
        print(f"gpux: error: {e}", file=sys.stderr)
        return 2
    for d in rep.damage:
        print(f"skipped: {d}", file=sys.stderr)
    ranges = ", ".join(f"{a}-{b}" for a, b in rep.ranges) or "none"
    print(f"copied {rep.records} record(s) into {args.out} (seqs {ranges}) in {len(rep.segments)} segment(s)")
    for a, b in rep.gaps:
        print(f"missing: seqs {a}-{b} (damaged in the source; the exchange will not start on {args.out} "
              "with this gap: see docs/operations.md, \"A damaged journal\")")
    return 0 if not rep.damage else 1


def register(sub: Any) -> None:
    p = sub.add_parser("journal", help="check the journal and snapshots, or salvage a damaged journal",
                       description="Check the command journal and the snapshots of a data directory, or copy "
                                   "every readable journal record into a new directory (docs/operations.md).")
    jsub = p.add_subparsers(dest="journal_command", required=True, metavar="ACTION")
    c = jsub.add_parser("check", help="verify every segment and snapshot; exit 1 if anything is damaged",
                        description="Read every journal segment (every record's CRC, the names, the sequence) "
                                    "and restore every snapshot. Prints one line per problem (segment, byte offset "
                                    "and sequence range, or the snapshot file) and exits 1 if there is any.")
    c.add_argument("data_dir", metavar="DATA", help="the exchange's data directory")
    c.add_argument("--config", metavar="FILE.toml", default=None,
                   help="the server's configuration (its instruments restore the snapshots; default: the defaults)")
    c.add_argument("--quiet", action="store_true", help="print only the problems and the summary")
    c.set_defaults(handler=_check)
    s = jsub.add_parser("salvage", help="copy every readable record, past damage too, into a new journal",
                        description="Copy every intact journal record of DATA, including those after a damaged "
                                    "one, byte for byte into the new journal directory OUT, for an operator to "
                                    "decide (docs/operations.md). DATA is only read. Exit 1 if records were lost.")
    s.add_argument("data_dir", metavar="DATA", help="the exchange's data directory")
    s.add_argument("out", metavar="OUT", help="a new directory for the salvaged journal")
    s.set_defaults(handler=_salvage)
