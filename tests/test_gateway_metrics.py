"""/metrics names what went wrong on a WebSocket: an oversized frame (closed with 1009) counts as
TOO_LARGE, a broken frame (invalid UTF-8 text, closed with 1007) as WS_PROTOCOL."""

from __future__ import annotations

import asyncio

import aiohttp
from exchange_helpers import running_exchange

from gateway.auth import Signer


def _count(text: str, code: str) -> int:
    for line in text.splitlines():
        if line.startswith(f'gpux_errors_total{{code="{code}"}}'):
            return int(line.split()[-1])
    return 0


def test_websocket_failures_are_counted_by_kind(tmp_path):
    async def scenario():
        async with running_exchange(tmp_path, fsync="off") as ex:
            _, key, secret = ex.account("t", "trader")
            async with aiohttp.ClientSession() as http:
                async def session():
                    ws = await http.ws_connect(ex.url + "/v1/ws", max_msg_size=0)
                    await ws.send_json(Signer(key, secret).ws_auth())
                    assert (await ws.receive_json())["type"] == "authenticated"
                    return ws

                ws = await session()
                await ws.send_str("x" * (ex.exchange.cfg.max_message_bytes + 1))
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009
                ws = await session()
                await ws._writer.send_frame(b"\xff\xfe", aiohttp.WSMsgType.TEXT)  # not UTF-8
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1007
                await asyncio.sleep(0.05)
                async with http.get(ex.url + "/metrics") as r:
                    text = await r.text()
            assert _count(text, "TOO_LARGE") == 1
            assert _count(text, "WS_PROTOCOL") == 1

    asyncio.run(scenario())
