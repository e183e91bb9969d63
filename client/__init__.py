"""The Python SDK of gpux (asyncio).

    from client import Client, FeedClient
    async with Client("http://127.0.0.1:8080", KEY, SECRET) as c: ...   # REST; c.trader(): WebSocket
    async with FeedClient("http://127.0.0.1:8080") as fc: ...           # market data

- `client.api` — `Client` (signed REST), `TraderSession` (a trader's WebSocket), `ClientError`;
- `client.feeds` — `FeedClient`, `Level2`: market-data subscriber with gap detection.
"""

from client.api import Client, ClientError, TraderSession
from client.feeds import FeedClient, Level2

__all__ = ["Client", "ClientError", "FeedClient", "Level2", "TraderSession"]
