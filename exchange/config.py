"""The exchange's configuration: one TOML file, every key optional (sensible defaults).

    [server]
    host = "127.0.0.1"
    port = 8080
    data_dir = "gpux-data"

    [journal]
    fsync = "batch"            # "batch": one fsync per batch before any ack; "off": never (tests only)
    segment_bytes = 67108864
    snapshot_every_s = 60
    verify_every_s = 21600     # closed segments CRC-checked in the background again this often

    [engine]
    clock_interval_s = 1       # a clock command per book every second of wall time (R4, R13, R14)
    book_threads = 0           # worker threads for books with big batches at once; 0: one per CPU, 1: none

    [limits]
    max_open_orders = 1000     # per account, bids and asks together
    rate_per_s = 500           # per key, token bucket
    rate_burst = 1000
    max_message_bytes = 65536  # REST bodies and WebSocket frames
    heartbeat_s = 10

    [instruments.H100]         # BookConfig fields (orderbook/config.py) + fees
    tick = 1000
    maker_fee_bps = 0
    taker_fee_bps = 0

Without any ``[instruments.*]`` table the exchange lists H100, A100, L40S and RTX4090 with
the defaults of DEFAULT_INSTRUMENTS.  docs/operations.md describes every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from exchange.instruments import CONFIG_FIELDS, ConfigError, read_toml
from orderbook.config import BookConfig

FEE_FIELDS = ("maker_fee_bps", "taker_fee_bps")
FSYNC_POLICIES = ("batch", "off")


@dataclass(frozen=True)
class Instrument:
    """A GPU class: its book's configuration and its fees (R1, R19)."""

    book: BookConfig
    maker_fee_bps: int = 0
    taker_fee_bps: int = 0

    @property
    def name(self) -> str:
        return self.book.name

    def to_dict(self) -> dict[str, Any]:
        return {**self.book.to_dict(), "maker_fee_bps": self.maker_fee_bps,
                "taker_fee_bps": self.taker_fee_bps}


def _default_instruments() -> dict[str, Instrument]:
    # plausible bounds per class; prices are µ$ per GPU-hour
    specs = {
        "H100": dict(min_price=10_000, max_price=50_000_000, max_gpus=16_384),
        "A100": dict(min_price=10_000, max_price=25_000_000, max_gpus=16_384),
        "L40S": dict(min_price=5_000, max_price=10_000_000, max_gpus=8_192),
        "RTX4090": dict(min_price=1_000, max_price=5_000_000, max_gpus=4_096),
    }
    return {name: Instrument(BookConfig(name=name, **kw)) for name, kw in specs.items()}


DEFAULT_INSTRUMENTS = _default_instruments()


PROVISIONING_MODES = ("agent", "auto")
LEDGER_SYNC = ("NORMAL", "FULL")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `gpux serve` needs.  Integers for money (µ$) and time (s)."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "gpux-data"
    fsync: str = "batch"
    segment_bytes: int = 64 << 20
    snapshot_every_s: int = 60
    verify_every_s: int = 6 * 3600  # the closed journal segments read and CRC-checked again this often
    clock_interval_s: int = 1
    book_threads: int = 0  # 0: one per CPU (at most one per class); 1: books one after the other
    max_open_orders: int = 1000
    rate_per_s: float = 500.0
    rate_burst: int = 1000
    max_message_bytes: int = 65536
    heartbeat_s: int = 10
    engine: str | None = None  # None: numba, falling back to the reference book with a warning
    redis_url: str | None = None
    redis_prefix: str = "gpux"
    redis_maxlen: int = 100_000  # stream entries (chunks of journal entries) Redis keeps, about
    # a core with a hot standby (exchange.lease, docs/operations.md): the leader's lease in Redis,
    # appends fenced by it, a batch answered only once it is in the Redis stream
    ha: bool = False
    lease_ms: int = 3000
    redis_replicas: int = 0  # with ha: a batch is answered once this many Redis replicas have it too (WAIT)
    advertise_url: str | None = None  # the core's URL for order gateways elsewhere (default http://HOST:PORT)
    # settlement (docs/settlement.md): "agent" = leases wait for the provider's agent (R18);
    # "auto" = every lease is ready at its start (a market without agents: simulations, tests)
    provisioning: str = "agent"
    provision_timeout_s: int = 300
    meter_interval_s: int = 3600
    ledger_synchronous: str = "NORMAL"
    instruments: dict[str, Instrument] = field(default_factory=lambda: dict(DEFAULT_INSTRUMENTS))

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigError(f"journal.fsync must be one of {', '.join(FSYNC_POLICIES)}, got {self.fsync!r}")
        for name in ("segment_bytes", "snapshot_every_s", "verify_every_s", "clock_interval_s", "max_open_orders",
                     "rate_burst", "max_message_bytes", "heartbeat_s", "redis_maxlen"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.provisioning not in PROVISIONING_MODES:
            raise ConfigError(f"settlement.provisioning must be one of {', '.join(PROVISIONING_MODES)}, "
                              f"got {self.provisioning!r}")
        if self.ledger_synchronous not in LEDGER_SYNC:
            raise ConfigError(f"settlement.ledger_synchronous must be one of {', '.join(LEDGER_SYNC)}, "
                              f"got {self.ledger_synchronous!r}")
        if self.ha and not self.redis_url:
            raise ConfigError("a core with a standby (ha) needs Redis: give redis_url (--redis URL)")
        if self.redis_replicas < 0:
            raise ConfigError("redis_replicas must be 0 or more")
        if self.lease_ms < 300:
            raise ConfigError("lease_ms must be at least 300")
        if self.book_threads < 0:
            raise ConfigError("book_threads must be 0 (one per CPU) or more")
        for name in ("provision_timeout_s", "meter_interval_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.rate_per_s <= 0:
            raise ConfigError("rate_per_s must be positive")
        if not self.instruments:
            raise ConfigError("at least one instrument is needed")

    def with_(self, **changes: Any) -> ServerConfig:
        """A copy with some fields changed (command-line options over the file)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


# TOML table -> the ServerConfig fields it may set
_SECTIONS: dict[str, tuple[str, ...]] = {
    "server": ("host", "port", "data_dir", "engine", "redis_url", "redis_prefix", "redis_maxlen", "ha", "lease_ms",
               "redis_replicas", "advertise_url"),
    "journal": ("fsync", "segment_bytes", "snapshot_every_s", "verify_every_s"),
    "engine": ("clock_interval_s", "book_threads"),
    "limits": ("max_open_orders", "rate_per_s", "rate_burst", "max_message_bytes", "heartbeat_s"),
    "settlement": ("provisioning", "provision_timeout_s", "meter_interval_s", "ledger_synchronous"),
}
_TYPES = {f.name: f.type for f in fields(ServerConfig)}


def load_config(path: str | Path | None = None) -> ServerConfig:
    """The configuration in ``path`` (None: all defaults).  Raises ConfigError naming the key."""
    if path is None:
        return ServerConfig()
    path = Path(path)
    data = read_toml(path)
    unknown = sorted(set(data) - set(_SECTIONS) - {"instruments"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(_SECTIONS))}, instruments")
    values: dict[str, Any] = {}
    for section, keys in _SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        bad = sorted(set(table) - set(keys))
        if bad:
            raise ConfigError(f"{path}: [{section}]: unknown key(s) {', '.join(bad)}; known: {', '.join(keys)}")
        for key, value in table.items():
            values[key] = _check_type(path, section, key, value)
    if "instruments" in data:
        values["instruments"] = _instruments(path, data["instruments"])
    try:
        return ServerConfig(**values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _check_type(path: Path, section: str, key: str, value: Any) -> Any:
    want = str(_TYPES[key])
    where = f"{path}: [{section}] {key}"
    if want.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if want.startswith("float") and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if want.startswith("bool") and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if want.startswith("str") and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _instruments(path: Path, tables: Any) -> dict[str, Instrument]:
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: [instruments] must hold at least one [instruments.NAME] table")
    out: dict[str, Instrument] = {}
    for name, table in tables.items():
        where = f"{path}: [instruments.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        if not name or not all(c.isalnum() or c in "-_." for c in name) or len(name) > 32:
            raise ConfigError(f"{where}: a class name is 1-32 letters, digits, '-', '_' or '.'")
        unknown = sorted(set(table) - CONFIG_FIELDS - set(FEE_FIELDS))
        if unknown:
            known = ", ".join(sorted(CONFIG_FIELDS | set(FEE_FIELDS)))
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {known}")
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        fees = {k: table[k] for k in FEE_FIELDS if k in table}
        for k, v in fees.items():
            if not 0 <= v <= 1000:
                raise ConfigError(f"{where}: {k} must be between 0 and 1000 basis points")
        try:
            book = BookConfig(name=name, **{k: v for k, v in table.items() if k not in FEE_FIELDS})
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        out[name] = Instrument(book, **fees)
    return out
