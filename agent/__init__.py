"""The reference provider agent, ``gpux agent`` (R18; docs/agent.md; its command line is `cli.agent`).

| module | what |
| --- | --- |
| `tasks.py` | the provisioning tasks the exchange sends, as msgspec Structs |
| `agent.py` | `Agent`: the feed, outstanding tasks, answers, teardown at lease end, reconnection |
| `backend.py` | the backend interface, `BackendError`, the GPU-id allocator |
| `ssh.py`, `kubernetes.py`, `command.py` | the three backends |
| `inventory.py` | the inventory file and the asks it keeps posted |
"""
