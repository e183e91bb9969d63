"""The trading CLI over the SDK (issue 3): `gpux ask`, `bid`, `orders`, `book`, `quote`, `leases`,
`cancel` against a running exchange, credentials from the environment; a refusal prints the
stable code and exits 1."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from exchange_helpers import USD, running_exchange


async def gpux(url: str, key: str, secret: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "GPUX_URL": url, "GPUX_KEY": key, "GPUX_SECRET": secret}
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "cli.main", *args, env=env,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await p.communicate()
    return p.returncode, out.decode(), err.decode()


def test_the_trading_commands_round_trip(tmp_path):
    async def scenario():
        async with running_exchange(tmp_path, fsync="off") as ex:
            _, pk, ps = ex.account("prov", "provider")
            _, tk, ts = ex.account("alice", "trader", 1000 * USD)
            rc, out, err = await gpux(ex.url, pk, ps, "ask", "H100", "--gpus", "8", "--price", "2.00",
                                      "--spot-price", "$1.20/h", "--end", "+2d")
            assert rc == 0, err
            ask = json.loads(out)
            assert ask["ok"] and ask["order"]["status"] == "open"
            rc, out, _ = await gpux(ex.url, tk, ts, "quote", "H100", "--kind", "on_demand", "--gpus", "4",
                                    "--hours", "2")
            quote = json.loads(out)
            assert rc == 0 and quote["complete"] and quote["cost"] == 4 * 2 * 2_000_000
            rc, out, err = await gpux(ex.url, tk, ts, "bid", "H100", "--kind", "on_demand", "--gpus", "4",
                                      "--hours", "2", "--limit", "2.10")
            assert rc == 0, err
            bid = json.loads(out)
            assert bid["type"] == "ack" and bid["trades"][0]["gpus"] == 4 and bid["trades"][0]["price"] == 2_000_000
            rc, out, _ = await gpux(ex.url, pk, ps, "leases")
            assert rc == 0 and [x["lease"] for x in json.loads(out)] == [bid["trades"][0]["lease"]]
            rc, out, _ = await gpux(ex.url, tk, ts, "bid", "H100", "--kind", "spot", "--gpus", "1", "--hours", "1",
                                    "--limit", "$0.50")
            resting = json.loads(out)["oid"]
            rc, out, _ = await gpux(ex.url, tk, ts, "orders")
            assert rc == 0 and [o["oid"] for o in json.loads(out)] == [resting]
            rc, out, _ = await gpux(ex.url, tk, ts, "book", "H100")
            book = json.loads(out)
            assert book["asks"] == [[2_000_000, 4]] and book["spot_bids"] == [[500_000, 1]]
            rc, out, _ = await gpux(ex.url, tk, ts, "cancel", str(resting))
            assert rc == 0 and json.loads(out)["order"]["status"] == "cancelled"
            rc, out, err = await gpux(ex.url, tk, ts, "bid", "H100", "--kind", "on_demand", "--gpus", "1",
                                      "--hours", "1", "--limit", "2.0005")
            assert rc == 1 and out == "" and "OFF_TICK" in err and "1000 µ$" in err
            rc, out, err = await gpux(ex.url, tk, "wrong-secret", "orders")
            assert rc == 1 and "BAD_SIGNATURE" in err

    asyncio.run(scenario())


def test_statement_over_rest_and_from_the_data_directory(tmp_path):
    """`gpux statement` (issue 5): the account's ledger — its deposit, the bid's escrow hold, the
    fill's cost into lease_prepaid — over REST with its key, and read from DATA/ledger.db."""

    async def scenario():
        async with running_exchange(tmp_path / "data", fsync="off") as ex:
            prov = ex.client("prov", "provider")
            acc, tk, ts = ex.account("alice", "trader", 1000 * USD)
            _, ak, asec = ex.account("auditor", "analyst")
            await prov.ask("H100", gpus=8, price=2_000_000, end=ex.now + 86_400)
            rc, out, err = await gpux(ex.url, tk, ts, "bid", "H100", "--kind", "on_demand", "--gpus", "4",
                                      "--hours", "2", "--limit", "2000000µ$")
            assert rc == 0, err
            lease = json.loads(out)["trades"][0]["lease"]
            rc, out, err = await gpux(ex.url, tk, ts, "statement", "--json")
            assert rc == 0, err
            st = json.loads(out)
            assert st["account"] == acc
            assert st["balances"] == {"available": 1000 * USD - 16_000_000, "lease_prepaid": 16_000_000}
            ids = [t["id"] for t in st["transfers"]]
            assert ids[0].startswith("deposit:accounts:") and any(i.endswith(":cost") for i in ids)
            assert [x["lease"] for x in st["leases"]] == [lease]
            rc, out, _ = await gpux(ex.url, tk, ts, "statement")  # text form
            assert rc == 0 and "lease_prepaid" in out and "16.00" in out and lease in out
            assert any(" escrow " in line and ":hold" in line for line in out.splitlines())  # the hold's leg
            rc, _, err = await gpux(ex.url, tk, ts, "statement", str(acc + 1))  # a trader sees only its own
            assert rc == 1 and "FORBIDDEN" in err
            rc, out, _ = await gpux(ex.url, ak, asec, "statement", str(acc), "--json")
            assert rc == 0 and json.loads(out)["balances"] == st["balances"]
        rc, out, err = await gpux("", "", "", "statement", "alice", "--data", str(tmp_path / "data"), "--json")
        assert rc == 0, err
        offline = json.loads(out)
        assert offline["balances"] == st["balances"] and len(offline["transfers"]) == len(st["transfers"])

    asyncio.run(scenario())
