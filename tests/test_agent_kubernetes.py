"""The agent's kubernetes backend: the manifests it renders, and a real run of a fake ``kubectl``
(a shell script on PATH that records its arguments and stdin and answers like a cluster)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from agent.backend import BackendError
from agent.kubernetes import KubernetesBackend, object_name
from agent.tasks import ProvisionTask

pytestmark = pytest.mark.timeout(60)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGmJ renter@laptop"


def _task(now: int, lease: str = "H100-7") -> ProvisionTask:
    return ProvisionTask(lease=lease, gpu_class="H100", trade_id=7, kind="reserved", gpus=8, start=now,
                         end=now + 7200, deadline=now + 300, renter=12, ssh_public_key=KEY)


def test_object_names_are_dns_labels() -> None:
    assert object_name("H100-7") == "gpux-h100-7"
    assert object_name("RTX4090-123456") == "gpux-rtx4090-123456"
    assert object_name("L40S_x.9") == "gpux-l40s-x-9"


def test_rendered_pod_service_and_secret() -> None:
    now = 1_767_225_600
    b = KubernetesBackend(image="registry.example/cuda-sshd:12.4", namespace="gpu", service_type="LoadBalancer",
                          ssh_port=22, runtime_class="nvidia")
    doc = b.render(_task(now), now)
    assert doc["kind"] == "List"
    secret, pod, svc = doc["items"]
    assert [o["kind"] for o in doc["items"]] == ["Secret", "Pod", "Service"]
    for o in doc["items"]:
        assert o["metadata"]["name"] == "gpux-h100-7" and o["metadata"]["namespace"] == "gpu"
        assert o["metadata"]["labels"]["gpux.io/lease"] == "H100-7"
    assert secret["stringData"]["authorized_keys"] == KEY + "\n"
    spec = pod["spec"]
    assert spec["activeDeadlineSeconds"] == 7200 and spec["restartPolicy"] == "Never"
    assert spec["runtimeClassName"] == "nvidia" and spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    assert c["image"] == "registry.example/cuda-sshd:12.4"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["GPUX_LEASE"] == "H100-7" and env["GPUX_GPUS"] == "8" and env["GPUX_END"] == str(now + 7200)
    assert env["PUBLIC_KEY"] == {"secretKeyRef": {"name": "gpux-h100-7", "key": "authorized_keys"}}
    assert c["volumeMounts"][0]["mountPath"] == "/etc/gpux"
    assert spec["volumes"][0]["secret"]["secretName"] == "gpux-h100-7"
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["selector"] == {"gpux.io/lease": "H100-7"}
    assert svc["spec"]["ports"] == [{"name": "ssh", "port": 22, "targetPort": 22, "protocol": "TCP"}]
    json.dumps(doc)  # what kubectl gets
    # the deadline counts from now, never below 1 s
    assert b.render(_task(now), now + 7199)["items"][1]["spec"]["activeDeadlineSeconds"] == 1
    assert b.render(_task(now), now + 9000)["items"][1]["spec"]["activeDeadlineSeconds"] == 1


FAKE_KUBECTL = r"""#!/bin/sh
# records each call, answers like a cluster with one node at 10.0.0.5
echo "$*" >> "$KUBE_LOG"
case "$*" in
  *" apply -f -"*) cat > "$KUBE_LOG.applied"; echo "pod/gpux-h100-7 created" ;;
  *" wait "*) [ -n "$KUBE_NOT_READY" ] && { echo "error: timed out waiting for the condition" >&2; exit 1; }
             echo "pod/gpux-h100-7 condition met" ;;
  *" get service "*) echo '{"spec": {"ports": [{"port": 22, "nodePort": 31022}]}}' ;;
  *" get pod "*) echo '{"status": {"hostIP": "10.0.0.5"}}' ;;
  *" delete "*) echo "deleted" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def fake_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    k = bindir / "kubectl"
    k.write_text(FAKE_KUBECTL)
    k.chmod(0o755)
    log = tmp_path / "kubectl.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KUBE_LOG", str(log))
    return log


def test_apply_wait_address_and_delete_with_kubectl(fake_kubectl: Path, tmp_path: Path) -> None:
    async def go() -> None:
        b = KubernetesBackend(namespace="gpu", manifests_dir=tmp_path / "manifests")
        now = int(time.time())
        conn = await b.provision(_task(now), [])
        assert conn == {"host": "10.0.0.5", "port": 31022, "user": "gpux", "pod": "gpux-h100-7", "namespace": "gpu"}
        applied = json.loads(Path(f"{fake_kubectl}.applied").read_text())
        assert [o["kind"] for o in applied["items"]] == ["Secret", "Pod", "Service"]
        assert json.loads((tmp_path / "manifests" / "gpux-h100-7.json").read_text()) == applied
        await b.teardown("H100-7")
        calls = fake_kubectl.read_text().splitlines()
        assert calls[0] == "--namespace gpu apply -f -"
        assert calls[1].startswith("--namespace gpu wait --for=condition=Ready pod/gpux-h100-7 --timeout=")
        assert calls[-1] == ("--namespace gpu delete pod,service,secret -l gpux.io/lease=H100-7 "
                             "--ignore-not-found --wait=false")
        advertised = KubernetesBackend(advertise="gpu.example.net")
        conn = await advertised.provision(_task(now, "H100-8"), [])
        assert (conn["host"], conn["port"]) == ("gpu.example.net", 31022)

    asyncio.run(go())


def test_pod_not_ready_fails_with_kubectls_sentence(fake_kubectl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_NOT_READY", "1")

    async def go() -> None:
        b = KubernetesBackend()
        with pytest.raises(BackendError, match="kubectl wait: error: timed out waiting for the condition"):
            await b.provision(_task(int(time.time())), [])
        await b.teardown("H100-7")  # what was applied is deleted
        assert "delete" in fake_kubectl.read_text().splitlines()[-1]

    asyncio.run(go())


def test_without_kubectl_fails_unless_dry_run(tmp_path: Path) -> None:
    async def go() -> None:
        now = int(time.time())
        b = KubernetesBackend(kubectl=str(tmp_path / "no-such-kubectl"), manifests_dir=tmp_path / "m")
        with pytest.raises(BackendError, match="^kubectl not found$"):
            await b.provision(_task(now), [])
        assert (tmp_path / "m" / "gpux-h100-7.json").exists()  # written for the provider to apply
        dry = KubernetesBackend(kubectl=str(tmp_path / "no-such-kubectl"), namespace="gpu", dry_run=True)
        conn = await dry.provision(_task(now), [])
        assert conn["host"] == "gpux-h100-7.gpu.svc" and conn["port"] == 22 and conn["dry_run"] == 1
        await dry.teardown("H100-7")
        no_key = ProvisionTask(lease="H100-9", gpus=1, end=now + 60)
        with pytest.raises(BackendError, match="renter has no SSH key"):
            await dry.provision(no_key, [])

    asyncio.run(go())
