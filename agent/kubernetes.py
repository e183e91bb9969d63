"""The ``kubernetes`` backend: a Pod per lease, requesting ``nvidia.com/gpu``, reached over SSH
through a Service.

Per lease (objects named ``gpux-<lease>``, e.g. ``gpux-h100-7``, labelled ``gpux.io/lease: H100-7``):

- a Secret holding the renter's public key as ``authorized_keys``;
- a Pod: the provider's image (``--k8s-image``; default the linuxserver.io OpenSSH server, which
  reads ``PUBLIC_KEY`` and ``USER_NAME`` and listens on 2222), ``resources.limits`` of
  ``nvidia.com/gpu: N``, the key as env ``PUBLIC_KEY`` / ``GPUX_SSH_PUBLIC_KEY`` and as the file
  ``/etc/gpux/authorized_keys``, ``GPUX_LEASE``/``GPUX_GPUS``/``GPUX_END``…, ``restartPolicy:
  Never`` and ``activeDeadlineSeconds`` up to the lease's end, so the cluster ends it even without
  the agent;
- a Service (``NodePort`` by default, or ``LoadBalancer``) with port 22 to the Pod's SSH port.

With ``kubectl`` on PATH the agent applies them (``kubectl apply -f -``), waits for the Pod to be
Ready, and answers with the Service's address: for a NodePort the node port on ``--ssh-host`` (or
the Pod's node IP), for a LoadBalancer its ingress IP or host name, port 22.  Teardown deletes the
three objects by label.  Without kubectl the lease fails ("kubectl not found"), unless
``--dry-run``: then nothing is applied and the lease is answered ready with the Service's
in-cluster name.  ``--manifests DIR`` also writes each lease's manifests to ``DIR/gpux-<lease>.json``
(a ``List``; kubectl reads JSON as YAML).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from agent.backend import BackendError
from agent.tasks import ProvisionTask

log = logging.getLogger("gpux.agent.kubernetes")

DEFAULT_IMAGE = "lscr.io/linuxserver/openssh-server:latest"
LEASE_LABEL = "gpux.io/lease"
USER = "gpux"


def object_name(lease: str) -> str:
    """A DNS-1123 name for a lease's objects: ``H100-7`` → ``gpux-h100-7``."""
    return ("gpux-" + re.sub(r"[^a-z0-9-]+", "-", lease.lower()).strip("-"))[:63].rstrip("-")


class KubernetesBackend:
    name = "kubernetes"

    def __init__(self, image: str = DEFAULT_IMAGE, namespace: str = "default", service_type: str = "NodePort",
                 ssh_port: int = 2222, advertise: str | None = None, manifests_dir: Path | str | None = None,
                 dry_run: bool = False, kubectl: str = "kubectl", ready_timeout: float = 600.0,
                 runtime_class: str | None = None) -> None:
        if service_type not in ("NodePort", "LoadBalancer"):
            raise ValueError("service type must be NodePort or LoadBalancer")
        self.image = image
        self.namespace = namespace
        self.service_type = service_type
        self.ssh_port = ssh_port
        self.advertise = advertise
        self.manifests_dir = Path(manifests_dir) if manifests_dir else None
        self.dry_run = dry_run
        self.kubectl = kubectl
        self.ready_timeout = ready_timeout
        self.runtime_class = runtime_class
        self.leases: dict[str, str] = {}  # lease -> object name

    # ------------------------------------------------------------------ manifests
    def render(self, task: ProvisionTask, now: int | None = None) -> dict[str, Any]:
        """The lease's Secret, Pod and Service as one ``List`` (plain JSON-able dicts)."""
        now = int(time.time()) if now is None else now
        name = object_name(task.lease)
        labels = {"app.kubernetes.io/managed-by": "gpux-agent", LEASE_LABEL: task.lease}
        if task.gpu_class:
            labels["gpux.io/class"] = task.gpu_class
        meta = {"name": name, "namespace": self.namespace, "labels": labels}
        key_ref = {"secretKeyRef": {"name": name, "key": "authorized_keys"}}
        env = [{"name": k, "value": v} for k, v in (
            ("GPUX_LEASE", task.lease), ("GPUX_CLASS", task.gpu_class), ("GPUX_GPUS", str(task.gpus)),
            ("GPUX_KIND", task.kind), ("GPUX_START", str(task.start)), ("GPUX_END", str(task.end)),
            ("USER_NAME", USER), ("PASSWORD_ACCESS", "false"))]
        env += [{"name": "PUBLIC_KEY", "valueFrom": key_ref}, {"name": "GPUX_SSH_PUBLIC_KEY", "valueFrom": key_ref}]
        pod_spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": max(1, task.end - now),
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "lease",
                "image": self.image,
                "ports": [{"name": "ssh", "containerPort": self.ssh_port, "protocol": "TCP"}],
                "env": env,
                "resources": {"limits": {"nvidia.com/gpu": str(task.gpus)}},
                "volumeMounts": [{"name": "authorized-keys", "mountPath": "/etc/gpux", "readOnly": True}],
                "readinessProbe": {"tcpSocket": {"port": self.ssh_port}, "periodSeconds": 2},
            }],
            "volumes": [{"name": "authorized-keys", "secret": {"secretName": name, "defaultMode": 0o444}}],
        }
        if self.runtime_class:
            pod_spec["runtimeClassName"] = self.runtime_class
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
                  "stringData": {"authorized_keys": task.ssh_public_key.strip() + "\n"}}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": dict(meta, annotations={"gpux.io/end": str(task.end), "gpux.io/renter": str(task.renter),
                                                   "gpux.io/kind": task.kind}),
               "spec": pod_spec}
        service = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
                   "spec": {"type": self.service_type, "selector": {LEASE_LABEL: task.lease},
                            "ports": [{"name": "ssh", "port": 22, "targetPort": self.ssh_port, "protocol": "TCP"}]}}
        return {"apiVersion": "v1", "kind": "List", "items": [secret, pod, service]}

    # ------------------------------------------------------------------ backend
    async def provision(self, task: ProvisionTask, gpu_ids: list[int],
                        previous: dict[str, Any] | None = None) -> dict[str, Any]:
        if not task.ssh_public_key.strip():
            raise BackendError("renter has no SSH key")
        now = int(time.time())
        manifest = self.render(task, now)
        name = object_name(task.lease)
        if self.manifests_dir is not None:
            self.manifests_dir.mkdir(parents=True, exist_ok=True)
            (self.manifests_dir / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if self.dry_run:
            self.leases[task.lease] = name
            return {"host": f"{name}.{self.namespace}.svc", "port": 22, "user": USER, "pod": name,
                    "namespace": self.namespace, "dry_run": 1}
        kubectl = shutil.which(self.kubectl)
        if kubectl is None:
            raise BackendError("kubectl not found")
        self.leases[task.lease] = name
        await self._kubectl(kubectl, "apply", "-f", "-", stdin=json.dumps(manifest).encode())
        wait_s = self.ready_timeout
        if task.deadline:
            wait_s = max(1.0, min(wait_s, task.deadline - now))
        await self._kubectl(kubectl, "wait", "--for=condition=Ready", f"pod/{name}", f"--timeout={int(wait_s)}s",
                            timeout=wait_s + 10)
        return await self._address(kubectl, name, time.monotonic() + wait_s)

    async def _address(self, kubectl: str, name: str, until: float) -> dict[str, Any]:
        conn: dict[str, Any] = {"user": USER, "pod": name, "namespace": self.namespace}
        while True:
            svc = json.loads(await self._kubectl(kubectl, "get", "service", name, "-o", "json"))
            if self.service_type == "NodePort":
                port = svc["spec"]["ports"][0].get("nodePort")
                host = self.advertise
                if not host:
                    pod = json.loads(await self._kubectl(kubectl, "get", "pod", name, "-o", "json"))
                    host = pod.get("status", {}).get("hostIP")
                if port and host:
                    return dict(conn, host=host, port=int(port))
            else:
                ingress = (svc.get("status", {}).get("loadBalancer", {}).get("ingress") or [{}])[0]
                host = ingress.get("ip") or ingress.get("hostname")
                if host:
                    return dict(conn, host=host, port=22)
            if time.monotonic() > until:
                raise BackendError(f"service {name} has no address yet")
            await asyncio.sleep(2)

    async def teardown(self, lease: str) -> None:
        name = self.leases.pop(lease, None)
        if name is None or self.dry_run:
            return
        kubectl = shutil.which(self.kubectl)
        if kubectl is None:
            log.warning("cannot delete the objects of lease %s: kubectl not found", lease)
            return
        try:
            await self._kubectl(kubectl, "delete", "pod,service,secret", "-l", f"{LEASE_LABEL}={lease}",
                                "--ignore-not-found", "--wait=false")
        except BackendError as e:
            log.warning("deleting the objects of lease %s: %s", lease, e)

    async def close(self) -> None:
        await asyncio.gather(*(self.teardown(lease) for lease in list(self.leases)))

    async def _kubectl(self, kubectl: str, *args: str, stdin: bytes | None = None, timeout: float = 60.0) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            kubectl, "--namespace", self.namespace, *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BackendError(f"kubectl {args[0]} did not finish within {timeout:g} s") from None
        if proc.returncode != 0:
            lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
            raise BackendError(f"kubectl {args[0]}: {lines[-1] if lines else f'exit status {proc.returncode}'}")
        return out
