"""``gpux agent``: the provider agent (docs/agent.md).

    gpux agent --backend ssh --gpus 8 --inventory inventory.toml      # GPUX_KEY / GPUX_SECRET of a provider

Credentials and the exchange as for the trading commands: --key/--secret or GPUX_KEY/GPUX_SECRET,
--url or GPUX_URL.  Runs until SIGINT/SIGTERM, then tears every lease down.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
BACKENDS = ("ssh", "kubernetes", "command")


def _error(message: str) -> int:
    print(f"gpux: error: {message}", file=sys.stderr)
    return 2


def make_backend(args: argparse.Namespace, state_dir: Path) -> Any:
    """The backend the options describe; ValueError names what is missing."""
    if args.backend == "ssh":
        from agent.ssh import SshBackend

        return SshBackend(state_dir, bind=args.ssh_bind, advertise=args.ssh_host)
    if args.backend == "command":
        from agent.command import CommandBackend

        if not args.provision_cmd:
            raise ValueError("--backend command needs --provision-cmd")
        return CommandBackend(args.provision_cmd, args.teardown_cmd, timeout=args.command_timeout)
    from agent.kubernetes import KubernetesBackend

    return KubernetesBackend(image=args.k8s_image, namespace=args.k8s_namespace, service_type=args.k8s_service_type,
                             ssh_port=args.k8s_ssh_port, advertise=args.ssh_host, manifests_dir=args.manifests,
                             dry_run=args.dry_run, kubectl=args.kubectl, runtime_class=args.k8s_runtime_class)


def _cmd_agent(args: argparse.Namespace) -> int:
    from agent.agent import Agent
    from agent.inventory import InventoryError, load_inventory
    from app.logs import setup_logging

    key, secret = args.key or os.environ.get("GPUX_KEY"), args.secret or os.environ.get("GPUX_SECRET")
    if not key or not secret:
        return _error("the agent needs a provider's key: --key/--secret or GPUX_KEY/GPUX_SECRET")
    url = args.url or os.environ.get("GPUX_URL", DEFAULT_URL)
    from client.api import ClientError, check_url

    try:
        check_url(url)
    except ClientError as e:
        return _error(f"{e.message} (from {'--url' if args.url else 'GPUX_URL'})")
    state_dir = Path(args.state_dir or os.environ.get("GPUX_AGENT_STATE", "gpux-agent"))
    try:
        entries = load_inventory(args.inventory) if args.inventory else None
        backend = make_backend(args, state_dir)
    except (InventoryError, ValueError, OSError) as e:
        return _error(str(e))
    setup_logging(args.log_level)

    async def main() -> None:
        agent = Agent(url, key, secret, backend, inventory=entries, state_dir=state_dir, gpus=args.gpus,
                      poll_s=args.poll)
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        try:
            await agent.run()
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("agent", help="the provider agent: provision leases (ssh, kubernetes, command), post asks",
                       description="Runs on a provider's host: provisions each lease the exchange sells and "
                                   "tears it down at its end (docs/agent.md).")
    p.add_argument("--url", help=f"exchange URL (env GPUX_URL, default {DEFAULT_URL})")
    p.add_argument("--key", help="API key id of a provider account (env GPUX_KEY)")
    p.add_argument("--secret", help="API secret (env GPUX_SECRET)")
    p.add_argument("--backend", choices=BACKENDS, required=True, help="how leases are provisioned")
    p.add_argument("--state-dir", metavar="DIR", help="host key, leases, inventory state "
                                                       "(env GPUX_AGENT_STATE, default gpux-agent)")
    p.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="GPUs on this host, ids 0..N-1, handed to leases as CUDA_VISIBLE_DEVICES (0: none assigned)")
    p.add_argument("--inventory", metavar="FILE.toml", help="asks to keep posted (docs/agent.md)")
    p.add_argument("--poll", type=float, default=30.0, metavar="S", help="fetch outstanding tasks every S seconds")
    p.add_argument("--log-level", default="INFO", help="log level (default INFO)")
    ssh = p.add_argument_group("ssh and kubernetes")
    ssh.add_argument("--ssh-bind", default="127.0.0.1", metavar="ADDR", help="ssh: listen address (default 127.0.0.1)")
    ssh.add_argument("--ssh-host", metavar="HOST", help="the host name or address renters are told to connect to")
    cmd = p.add_argument_group("command")
    cmd.add_argument("--provision-cmd", metavar="CMD", help="shell command: task in env and on stdin, "
                                                            "connection JSON on stdout")
    cmd.add_argument("--teardown-cmd", metavar="CMD", help="shell command run at the lease's end")
    cmd.add_argument("--command-timeout", type=float, default=300.0, metavar="S",
                     help="kill a provision or teardown command after S seconds (default 300)")
    k8s = p.add_argument_group("kubernetes")
    k8s.add_argument("--k8s-image", default="lscr.io/linuxserver/openssh-server:latest",
                     help="the image of each lease's pod, an SSH server (default linuxserver's openssh-server)")
    k8s.add_argument("--k8s-namespace", default="default", help="namespace of the leases' pods (default default)")
    k8s.add_argument("--k8s-service-type", choices=("NodePort", "LoadBalancer"), default="NodePort",
                     help="how renters reach a pod's SSH port (default NodePort)")
    k8s.add_argument("--k8s-ssh-port", type=int, default=2222, help="the image's SSH port (default 2222)")
    k8s.add_argument("--k8s-runtime-class", help="e.g. nvidia")
    k8s.add_argument("--kubectl", default="kubectl", help="kubectl to run (default: kubectl on PATH)")
    k8s.add_argument("--manifests", metavar="DIR", help="also write each lease's manifests here")
    k8s.add_argument("--dry-run", action="store_true", help="apply nothing; answer ready with the rendered address")
    p.set_defaults(handler=_cmd_agent)
