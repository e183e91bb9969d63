"""The provider agent against a small real exchange-side server (aiohttp, in the test) that speaks
the provisioning protocol: the feeds WebSocket with the signed auth and the private
``provisioning`` channel, ``GET /v1/provisioning``, ``POST /v1/provisioning/{lease}``,
``GET /v1/leases``.  Signatures are checked with the exchange's own code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from agent.agent import Agent
from agent.command import CommandBackend
from agent.ssh import SshBackend
from agent.sshlib import asyncssh
from gateway.auth import WS_METHOD, WS_PATH, sign

pytestmark = pytest.mark.timeout(120)

KEY, SECRET, ACCOUNT = "gk_provider0000000", "provider-secret", 5


class ProtoExchange:
    """The exchange's side of the agent protocol, and nothing else."""

    def __init__(self) -> None:
        self.outstanding: dict[str, dict[str, Any]] = {}
        self.answers: list[tuple[str, dict[str, Any]]] = []
        self.leases: list[dict[str, Any]] = []
        self.sockets: set[web.WebSocketResponse] = set()
        self.subscribed: set[web.WebSocketResponse] = set()
        self.u = 0
        self.refuse_answers = 0  # answer the next N answers with 503
        self.fetches = 0
        app = web.Application()
        app.router.add_get("/v1/feeds", self.feeds)
        app.router.add_get("/v1/provisioning", self.get_tasks)
        app.router.add_post("/v1/provisioning/{lease}", self.post_answer)
        app.router.add_get("/v1/leases", self.get_leases)
        self.app = app
        self.url = ""

    def _check(self, request: web.Request, body: bytes) -> None:
        ts = request.headers.get("GPUX-Timestamp", "0")
        want = sign(SECRET, int(ts), request.method, request.path_qs, body)
        if request.headers.get("GPUX-Key") != KEY or request.headers.get("GPUX-Signature") != want:
            raise web.HTTPUnauthorized(text='{"error": {"code": "BAD_SIGNATURE", "message": "bad"}}')

    async def get_tasks(self, request: web.Request) -> web.Response:
        self._check(request, b"")
        self.fetches += 1
        return web.json_response({"tasks": list(self.outstanding.values())})

    async def post_answer(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._check(request, body)
        if self.refuse_answers:
            self.refuse_answers -= 1
            return web.json_response({"error": {"code": "UNAVAILABLE", "message": "shutting down"}}, status=503)
        lease = request.match_info["lease"]
        self.answers.append((lease, json.loads(body)))
        self.outstanding.pop(lease, None)
        return web.json_response({"ok": True, "lease": lease})

    async def get_leases(self, request: web.Request) -> web.Response:
        self._check(request, b"")
        return web.json_response({"leases": self.leases})

    async def feeds(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.add(ws)
        await ws.send_json({"type": "hello", "classes": ["H100"], "private": ["provisioning"]})
        authed = False
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT and msg.type != WSMsgType.BINARY:
                    continue
                op = json.loads(msg.data)
                if op.get("op") == "auth":
                    assert set(op) <= {"op", "key", "ts", "sig", "id"}, op
                    ok = op["key"] == KEY and op["sig"] == sign(SECRET, op["ts"], WS_METHOD, WS_PATH)
                    authed = ok
                    await ws.send_json({"type": "authenticated", "id": op.get("id"), "account": ACCOUNT,
                                        "role": "provider"} if ok else
                                       {"type": "error", "id": op.get("id"), "code": "BAD_SIGNATURE", "message": "x"})
                elif op.get("op") == "subscribe" and op.get("channel") == "provisioning" and authed:
                    await ws.send_json({"type": "subscribed", "id": op.get("id"), "channel": "provisioning"})
                    await ws.send_json({"type": "provisioning", "account": ACCOUNT, "class": "", "seq": 0,
                                        "time": int(time.time()), "u": self.u, "action": "snapshot",
                                        "provisioning": []})
                    self.subscribed.add(ws)
        finally:
            self.sockets.discard(ws)
            self.subscribed.discard(ws)
        return ws

    async def push(self, items: list[Any], skip: int = 0) -> None:
        """One update on the channel (``skip``: pretend messages before it were lost)."""
        self.u += 1 + skip
        for ws in list(self.subscribed):
            await ws.send_json({"type": "provisioning", "account": ACCOUNT, "class": "H100", "seq": 1,
                                "time": int(time.time()), "u": self.u, "action": "update", "provisioning": items})

    async def send_raw(self, text: str) -> None:
        for ws in list(self.subscribed):
            await ws.send_str(text)

    async def drop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()

    async def wait_answer(self, lease: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ref, body in self.answers:
                if ref == lease:
                    return body
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no answer for {lease}; answers: {self.answers}")


@contextlib.asynccontextmanager
async def serving(port: int = 0) -> AsyncIterator[ProtoExchange]:
    px = ProtoExchange()
    runner = web.AppRunner(px.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    px.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield px
    finally:
        await px.drop()
        await runner.cleanup()


def provision(lease: str, key: asyncssh.SSHKey | None = None, gpus: int = 2, seconds: int = 600,
              **kw: Any) -> dict[str, Any]:
    now = int(time.time())
    item = {"task": "provision", "lease": lease, "class": "H100", "trade_id": int(lease.split("-")[1]),
            "kind": "on_demand", "gpus": gpus, "start": now, "end": now + seconds, "deadline": now + 120,
            "renter": 12, "ssh_public_key": key.export_public_key().decode() if key is not None else ""}
    item.update(kw)
    return item


async def login(conn: dict[str, Any], key: asyncssh.SSHKey) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(conn["host"], conn["port"], username=conn["user"], client_keys=[key],
                                  known_hosts=None)


def test_outstanding_task_provisioned_over_ssh_and_torn_down_at_its_end(tmp_path: Path) -> None:
    renter = asyncssh.generate_private_key("ssh-ed25519")

    async def go() -> None:
        async with serving() as px:
            px.outstanding["H100-7"] = provision("H100-7", renter, gpus=2, seconds=4)
            async with Agent(px.url, KEY, SECRET, SshBackend(tmp_path), state_dir=tmp_path, gpus=4) as agent:
                ans = await px.wait_answer("H100-7")
                assert ans["status"] == "ready", ans
                conn = ans["connection"]
                assert conn["host"] == "127.0.0.1" and conn["user"] == "gpux"
                async with await login(conn, renter) as c:
                    r = await c.run("echo $GPUX_LEASE $GPUX_GPUS $CUDA_VISIBLE_DEVICES")
                    assert r.stdout == "H100-7 2 0,1\n"
                    await asyncio.wait_for(c.wait_closed(), 10)  # the lease ends under the session
                await agent.wait_status("H100-7", "ended", timeout=10)
                with pytest.raises(OSError):
                    await login(conn, renter)
                assert agent.account == ACCOUNT and agent.connects == 1
                assert json.loads((tmp_path / "leases.json").read_text()) == {}

    asyncio.run(go())


def test_pushed_tasks_failures_and_end_tasks_with_the_command_backend(tmp_path: Path) -> None:
    log = tmp_path / "log"
    prov = tmp_path / "prov.sh"
    prov.write_text(f"""#!/bin/sh
[ "$GPUX_LEASE" = "H100-2" ] && {{ echo "rack B is down" >&2; exit 1; }}
echo "up $GPUX_LEASE $CUDA_VISIBLE_DEVICES" >> {log}
echo '{{"host": "node-1", "port": 22, "user": "root"}}'
""")
    prov.chmod(0o755)
    backend = CommandBackend(str(prov), f"echo down $GPUX_LEASE >> {log}")

    async def go() -> None:
        async with serving() as px:
            async with Agent(px.url, KEY, SECRET, backend, gpus=8) as agent:
                await asyncio.wait_for(agent.connected.wait(), 10)
                await px.push([provision("H100-1", gpus=4), provision("H100-2", gpus=1)])
                assert (await px.wait_answer("H100-1")) == {
                    "status": "ready", "connection": {"host": "node-1", "port": 22, "user": "root"}}
                assert (await px.wait_answer("H100-2")) == {"status": "failed", "reason": "rack B is down"}
                # too few GPUs left for a third lease (4 of 8 held by H100-1)
                await px.push([provision("H100-3", gpus=5)])
                ans = await px.wait_answer("H100-3")
                assert ans["status"] == "failed" and "not enough free GPUs" in ans["reason"]
                # preemption notice: H100-1 now ends in a moment; its GPUs go back
                await px.push([{"task": "end", "lease": "H100-1", "class": "H100", "trade_id": 1,
                                "end": int(time.time()) + 1, "reason": "preempted"}])
                await agent.wait_status("H100-1", "ended", timeout=10)
                await px.push([provision("H100-4", gpus=8)])
                assert (await px.wait_answer("H100-4"))["status"] == "ready"
                # the exchange fails a lease: torn down at once
                await px.push([{"task": "end", "lease": "H100-4", "end": int(time.time()) + 3600,
                                "reason": "failed"}])
                await agent.wait_status("H100-4", "ended", timeout=10)
                # a repeated task is answered again, not provisioned again
                n = len(px.answers)
                await px.push([provision("H100-2", gpus=1)])
                for _ in range(100):
                    if len(px.answers) > n:
                        break
                    await asyncio.sleep(0.02)
                assert px.answers[-1] == ("H100-2", {"status": "failed", "reason": "rack B is down"})
        assert log.read_text().splitlines() == ["up H100-1 0,1,2,3", "down H100-1", "up H100-4 0,1,2,3,4,5,6,7",
                                                "down H100-4"]

    asyncio.run(go())


def test_bad_messages_are_logged_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    renter = asyncssh.generate_private_key("ssh-ed25519")

    async def go() -> None:
        async with serving() as px:
            async with Agent(px.url, KEY, SECRET, SshBackend(tmp_path)) as agent:
                await asyncio.wait_for(agent.connected.wait(), 10)
                await px.send_raw("not json {")
                await px.send_raw("[1, 2, 3]")
                await px.push([{"task": "provision"}, "a string", {"task": "explode", "lease": "X-1"},
                               provision("H100-5", renter, gpus=0), provision("H100-6", None)])
                await px.push({"not": "a list"})  # type: ignore[arg-type]
                await px.push([provision("H100-7", renter)])
                assert (await px.wait_answer("H100-7"))["status"] == "ready"
                assert (await px.wait_answer("H100-6")) == {"status": "failed", "reason": "renter has no SSH key"}
                assert [a for a, _ in px.answers if a == "H100-5"] == []  # 0 GPUs: not a valid task
                assert agent.connects == 1

    asyncio.run(go())
    assert "bad provisioning task" in caplog.text


def test_reconnects_and_catches_up_on_what_it_missed(tmp_path: Path) -> None:
    async def go() -> None:
        backend = CommandBackend("echo '{\"host\": \"n\", \"port\": 1, \"user\": \"u\"}'")
        async with serving() as px:
            async with Agent(px.url, KEY, SECRET, backend) as agent:
                await asyncio.wait_for(agent.connected.wait(), 10)
                while px.fetches < 1:  # the first fetch is done
                    await asyncio.sleep(0.01)
                # the connection drops; a task comes while the agent is away
                px.outstanding["H100-1"] = provision("H100-1")
                await px.drop()
                assert (await px.wait_answer("H100-1"))["status"] == "ready"
                assert agent.connects == 2
                # a lost message (u jumps): the agent fetches what is outstanding
                px.outstanding["H100-2"] = provision("H100-2")
                fetches = px.fetches
                await px.push([], skip=1)
                assert (await px.wait_answer("H100-2"))["status"] == "ready"
                assert px.fetches > fetches
                # answers that fail with 503 are retried
                px.refuse_answers = 2
                await px.push([provision("H100-3")])
                assert (await px.wait_answer("H100-3"))["status"] == "ready"
                # an end missed while away is found in GET /v1/leases after a reconnect
                px.leases = [{"lease": "H100-1", "provider": ACCOUNT, "end": int(time.time()), "status": "released"}]
                await px.drop()
                await agent.wait_status("H100-1", "ended", timeout=15)
                assert agent.leases["H100-2"].status == "ready"

    asyncio.run(go())


def test_exchange_down_at_start_then_up(tmp_path: Path) -> None:
    async def go() -> None:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        backend = CommandBackend("echo '{\"host\": \"n\", \"port\": 1, \"user\": \"u\"}'")
        async with Agent(f"http://127.0.0.1:{port}", KEY, SECRET, backend) as agent:
            await asyncio.sleep(1.0)  # refused a few times
            assert not agent.connected.is_set()
            async with serving(port) as px:
                px.outstanding["H100-1"] = provision("H100-1")
                assert (await px.wait_answer("H100-1"))["status"] == "ready"

    asyncio.run(go())


def test_a_restarted_agent_serves_its_leases_again_on_the_same_port(tmp_path: Path) -> None:
    renter = asyncssh.generate_private_key("ssh-ed25519")

    async def go() -> None:
        async with serving() as px:
            px.outstanding["H100-9"] = provision("H100-9", renter)
            async with Agent(px.url, KEY, SECRET, SshBackend(tmp_path), state_dir=tmp_path, gpus=2):
                conn = (await px.wait_answer("H100-9"))["connection"]
            with pytest.raises(OSError):  # a graceful stop tears everything down
                await login(conn, renter)
            n = len(px.answers)
            async with Agent(px.url, KEY, SECRET, SshBackend(tmp_path), state_dir=tmp_path, gpus=2) as agent:
                st = await agent.wait_status("H100-9", "ready")
                assert st.connection == conn and st.gpu_ids == [0, 1]
                async with await login(conn, renter) as c:
                    assert (await c.run("echo $GPUX_LEASE")).stdout == "H100-9\n"
                assert len(px.answers) == n  # same connection: nothing to tell the exchange

    asyncio.run(go())


def test_the_cli_runs_the_agent_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "log"

    async def go() -> None:
        async with serving() as px:
            px.outstanding["H100-1"] = provision("H100-1")
            env = dict(os.environ, GPUX_KEY=KEY, GPUX_SECRET=SECRET)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", "agent", "--url", px.url, "--backend", "command",
                "--state-dir", str(tmp_path / "state"), "--gpus", "4",
                "--provision-cmd",
                f"echo up $GPUX_LEASE >> {log}; echo '{{\"host\": \"h\", \"port\": 2, \"user\": \"u\"}}'",
                "--teardown-cmd", f"echo down $GPUX_LEASE >> {log}", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                assert (await px.wait_answer("H100-1", timeout=60))["connection"]["host"] == "h"
            finally:
                proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()
            assert log.read_text().splitlines() == ["up H100-1", "down H100-1"]
            assert b"lease H100-1 ready" in err and b"lease H100-1 ended" not in err  # torn down by the stop

    asyncio.run(go())


def test_the_cli_refuses_without_a_key_or_a_provision_command(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import main

    monkeypatch.delenv("GPUX_KEY", raising=False)
    monkeypatch.delenv("GPUX_SECRET", raising=False)
    assert main(["agent", "--backend", "ssh", "--state-dir", str(tmp_path)]) == 2
    assert main(["agent", "--backend", "command", "--key", "k", "--secret", "s"]) == 2
    bad = tmp_path / "inv.toml"
    bad.write_text("[[asks]]\nclass='H100'\n")
    assert main(["agent", "--backend", "ssh", "--key", "k", "--secret", "s", "--inventory", str(bad),
                 "--state-dir", str(tmp_path)]) == 2
