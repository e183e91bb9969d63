"""The agent's command backend with real shell scripts: success, failure, bad output, timeout,
teardown."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from agent.backend import BackendError
from agent.command import CommandBackend
from agent.tasks import ProvisionTask

pytestmark = pytest.mark.timeout(60)


def _task(lease: str = "A100-3") -> ProvisionTask:
    now = int(time.time())
    return ProvisionTask(lease=lease, gpu_class="A100", trade_id=3, kind="spot", gpus=4, start=now, end=now + 3600,
                         renter=9, ssh_public_key="ssh-ed25519 AAAAC3Nza renter@laptop")


def _script(tmp_path: Path, name: str, body: str) -> str:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)


def test_provision_script_gets_the_task_and_its_json_is_the_connection(tmp_path: Path) -> None:
    log = tmp_path / "log"
    prov = _script(tmp_path, "prov.sh", f"""
cat > {tmp_path}/stdin.json
echo "$GPUX_LEASE $GPUX_CLASS $GPUX_GPUS $GPUX_KIND $GPUX_START $GPUX_END $CUDA_VISIBLE_DEVICES" > {log}
echo "$GPUX_SSH_PUBLIC_KEY" >> {log}
echo "provisioning..." >&2
printf '{{"host": "gpu-node-4.example", "port": 2201, "user": "ubuntu"}}'
""")
    down = _script(tmp_path, "down.sh", f'echo "down $GPUX_LEASE $GPUX_CONNECTION" >> {log}\n')
    task = _task()

    async def go() -> None:
        b = CommandBackend(prov, down)
        conn = await b.provision(task, [4, 5, 6, 7])
        assert conn == {"host": "gpu-node-4.example", "port": 2201, "user": "ubuntu"}
        first, key = log.read_text().splitlines()
        assert first == f"A100-3 A100 4 spot {task.start} {task.end} 4,5,6,7"
        assert key == "ssh-ed25519 AAAAC3Nza renter@laptop"
        assert json.loads((tmp_path / "stdin.json").read_text())["lease"] == "A100-3"
        await b.teardown("A100-3")
        last = log.read_text().splitlines()[-1]
        assert last.startswith("down A100-3 ") and json.loads(last.split(" ", 2)[2])["port"] == 2201
        await b.teardown("A100-3")  # unknown now: nothing runs
        assert len(log.read_text().splitlines()) == 3

    asyncio.run(go())


def test_failure_reason_is_the_last_line_of_stderr(tmp_path: Path) -> None:
    prov = _script(tmp_path, "prov.sh", 'echo "checking GPUs" >&2\necho "no free node in rack B" >&2\nexit 3\n')

    async def go() -> None:
        b = CommandBackend(prov)
        with pytest.raises(BackendError, match="^no free node in rack B$"):
            await b.provision(_task(), [])
        silent = CommandBackend(_script(tmp_path, "silent.sh", "exit 7\n"))
        with pytest.raises(BackendError, match="exited with status 7"):
            await silent.provision(_task(), [])
        assert not b.leases

    asyncio.run(go())


def test_output_must_be_a_json_object_of_strings_and_integers(tmp_path: Path) -> None:
    async def go() -> None:
        for body, match in (("echo ready\n", "no JSON object"), ("echo '[1, 2]'\n", "no JSON object"),
                            ("echo '{\"host\": \"h\", \"port\": 2.5}'\n", "port")):
            b = CommandBackend(_script(tmp_path, "p.sh", body))
            with pytest.raises(BackendError, match=match):
                await b.provision(_task(), [])

    asyncio.run(go())


def test_a_script_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    prov = _script(tmp_path, "slow.sh", f"sleep 30\ntouch {marker}\n")

    async def go() -> None:
        b = CommandBackend(prov, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="did not finish within 0.5 s"):
            await b.provision(_task(), [])
        assert time.monotonic() - t0 < 5

    asyncio.run(go())
    assert not marker.exists()
