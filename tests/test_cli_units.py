"""Prices and money as a person writes them (cli/units.py): exact integer µ$, never floats, and
refusals that name the unit."""

from __future__ import annotations

import re

import pytest

from cli.units import MAX_MICRO, UnitError, format_usd, parse_money, parse_price


@pytest.mark.parametrize("text, micro", [
    ("2.10", 2_100_000), ("$2.10", 2_100_000), ("2.10/h", 2_100_000), ("$2.10/GPU-hour", 2_100_000),
    ("2.1 /hr", 2_100_000), ("2", 2_000_000), ("0.001", 1_000), ("2100000µ$", 2_100_000), ("2100000u$", 2_100_000),
    ("0.000001", 1), ("1,000.50", 1_000_500_000), (" 2.50 ", 2_500_000), ("2.100000", 2_100_000),
    ("0.29", 290_000),  # 0.29 * 1e6 is 289999.99999999994 as a float: the digits are read as integers
])
def test_prices_as_written(text, micro):
    assert parse_price(text) == micro


@pytest.mark.parametrize("text, words", [
    ("2.10.5", "not a price"), ("abc", "not a price"), ("", "not a price"), ("1,5", "not a price"),
    ("1e3", "not a price"), ("-1", "negative"), ("1.1234567", "more than 6 decimals"), ("2.5µ$", "whole numbers"),
    ("$2µ$", "both $ and µ$"), ("99999999999999", "more than the most"),
])
def test_bad_prices_name_the_unit(text, words):
    with pytest.raises(UnitError, match=re.escape(words)) as e:
        parse_price(text, "--limit")
    assert "--limit" in str(e.value) and ("dollars" in str(e.value) or "µ$" in str(e.value))


def test_money_and_its_bounds():
    assert parse_money("$1,000") == 1_000_000_000
    assert parse_money("0") == 0
    assert parse_money(f"{MAX_MICRO}µ$") == MAX_MICRO
    with pytest.raises(UnitError, match="/h|not a USD amount"):
        parse_money("2.10/h")  # a rate is not an amount
    with pytest.raises(UnitError) as e:
        parse_money("-5")
    assert "from 0" in str(e.value) and "$0.000001" in str(e.value)
    assert format_usd(2_100_000) == "2.10" and format_usd(1) == "0.000001"
