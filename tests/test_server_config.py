"""`gpux serve --config FILE.toml`: one file, every key optional, clear errors naming the key (R1:
the classes and their bounds are configuration, not code)."""

from __future__ import annotations

import pytest

from exchange.config import DEFAULT_INSTRUMENTS, ServerConfig, load_config
from exchange.instruments import ConfigError


def _write(tmp_path, text: str):
    p = tmp_path / "gpux.toml"
    p.write_text(text)
    return p


def test_no_file_gives_the_defaults():
    cfg = load_config(None)
    assert cfg == ServerConfig()
    assert set(cfg.instruments) == set(DEFAULT_INSTRUMENTS) == {"H100", "A100", "L40S", "RTX4090"}
    assert cfg.fsync == "batch" and cfg.max_message_bytes == 65536 and cfg.clock_interval_s == 1


def test_every_section_is_read(tmp_path):
    cfg = load_config(_write(tmp_path, """
[server]
port = 9000
data_dir = "/tmp/x"
engine = "reference"
[journal]
fsync = "off"
snapshot_every_s = 5
[engine]
clock_interval_s = 2
book_threads = 1
[limits]
max_open_orders = 7
rate_per_s = 2.5
[instruments.B200]
tick = 5000
min_price = 5000
max_price = 100000000
gate_s = 600
taker_fee_bps = 15
"""))
    assert (cfg.port, cfg.data_dir, cfg.engine) == (9000, "/tmp/x", "reference")
    assert (cfg.fsync, cfg.snapshot_every_s) == ("off", 5)
    assert (cfg.clock_interval_s, cfg.max_open_orders, cfg.rate_per_s) == (2, 7, 2.5)
    assert cfg.book_threads == 1
    assert list(cfg.instruments) == ["B200"]  # the file's classes replace the defaults
    b200 = cfg.instruments["B200"]
    assert (b200.book.tick, b200.book.gate_s, b200.taker_fee_bps, b200.maker_fee_bps) == (5000, 600, 15, 0)


@pytest.mark.parametrize("text, needle", [
    ("[server]\nport = \"80\"\n", "port must be an integer"),
    ("[server]\nbogus = 1\n", "unknown key(s) bogus"),
    ("[nonsense]\nx = 1\n", "unknown table(s) nonsense"),
    ("[journal]\nfsync = \"sometimes\"\n", "journal.fsync must be one of"),
    ("[limits]\nmax_open_orders = 0\n", "max_open_orders must be at least 1"),
    ("[engine]\nbook_threads = -1\n", "book_threads must be 0 (one per CPU) or more"),
    ("[instruments.H100]\ntick = 1000\nmin_price = 1500\n", "min_price must be a positive multiple of tick"),
    ("[instruments.H100]\ncolour = 3\n", "unknown key(s) colour"),
    ("[instruments.H100]\ntaker_fee_bps = 5000\n", "taker_fee_bps must be between 0 and 1000"),
    ("[instruments.\"bad name!\"]\ntick = 1000\n", "a class name is 1-32 letters"),
    ("[server\n", "gpux.toml"),
])
def test_bad_files_are_refused_with_the_key_named(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    assert needle in str(e.value)


def test_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "absent.toml")


def test_command_line_overrides_keep_the_rest():
    cfg = ServerConfig(port=1).with_(port=2, host=None)
    assert cfg.port == 2 and cfg.host == "127.0.0.1"


def test_book_threads_reach_the_engine(tmp_path):
    from exchange.recovery import recover

    for d in "abc":
        (tmp_path / d / "journal").mkdir(parents=True)
    one = recover(ServerConfig(data_dir=str(tmp_path / "a"), book_threads=1))
    two = recover(ServerConfig(data_dir=str(tmp_path / "b"), book_threads=2))
    auto = recover(ServerConfig(data_dir=str(tmp_path / "c")))
    assert (one.threads, two.threads) == (1, 2)
    assert 1 <= auto.threads <= len(auto.books)
