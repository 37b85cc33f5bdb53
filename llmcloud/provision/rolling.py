"""Engine VMs replaced one at a time on `pulumi up` (configure: true, split with two or more engine hosts).

A VM is replaced, not changed, when its image, flavor or boot volume changes; Pulumi would replace every
engine VM at once and the endpoint would answer nothing until the last one is configured. Instead each engine
host has a `PoolMember`, a resource that stands for "this VM serves in the edge's pools":

- it is replaced with its VM (`replace_with`), and Pulumi deletes it before it deletes the VM: its delete
  takes the host out of the edge's pools and lets the requests it serves finish (pool.yml, out);
- once the new VM runs, it is created again: it waits for the VM (SSH, cloud-init; its new host key learned,
  the old one forgotten), converges site.yml on that host alone (its engine checked with a real completion),
  and puts it back into the pools (pool.yml, in);
- the next engine VM depends on it, so Pulumi touches the next one only then; the first engine VM depends on
  the edge, so the edge is never replaced together with the engines.

It acts only on a stack that `Configure` has converged (its record, ``CONFIGURED``, names the host): a new
stack or a new replica is converged by `Configure` with everything else. When the edge itself was replaced in
the same `up`, there is no pool to leave or join: the engine VMs are still replaced one after the other, and
`Configure` converges every host after the last one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

#: What Configure last converged and verified: {"servers": {host: server id}}, in the stack's inventory.
CONFIGURED = Path("state") / "configured.json"
POOL_PLAYBOOK = "pool.yml"


def configured(inventory_dir: Path) -> dict[str, str]:
    """{host: server id} as Configure last converged them; empty before it ever did."""
    record = Path(inventory_dir) / CONFIGURED
    return json.loads(record.read_text()).get("servers", {}) if record.is_file() else {}


def record_configured(inventory_dir: Path, servers: dict[str, str]) -> None:
    record = Path(inventory_dir) / CONFIGURED
    record.parent.mkdir(mode=0o700, exist_ok=True)
    record.write_text(json.dumps({"servers": servers}, indent=1, sort_keys=True) + "\n")


def _say(text: str) -> None:
    # The dynamic provider's stderr reaches `pulumi up`'s output as it comes.
    sys.stderr.write(f"llmcloud: {text}\n")
    sys.stderr.flush()


class PoolMemberProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        self._join(props)
        return CreateResult(id_=f"pool-member-{props['host']}", outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # Another server is another member: out of the pools before the old one goes (delete first).
        replaces = [k for k in ("host", "server") if olds.get(k) != news.get(k)]
        kept = ("edges", "inventory_dir", "timeout")
        changes = bool(replaces) or any(olds.get(k) != news.get(k) for k in kept)
        return DiffResult(changes=changes, replaces=replaces, stables=[], delete_before_replace=True)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Out of the edge's pools, its running requests finished, before its VM is deleted."""
        inventory_dir, host = Path(props["inventory_dir"]), props["host"]
        if host not in configured(inventory_dir) or self._edges_replaced(props):
            return
        from llmcloud import converge
        from llmcloud.progress import Progress

        progress = Progress(f"{host} out of the pools")
        with progress.step(f"take {host} out of the edge's pools, its running requests finished"):
            result = converge.converge(
                inventory_dir,
                progress,
                playbook=POOL_PLAYBOOK,
                extravars={"llmcloud_pool": "out"},
                limit=host,
            )
        if not result.ok:
            # Nothing to keep: the VM goes either way. Requests it still serves may fail; say so, go on.
            _say(f"WARNING: could not take {host} out of the pools ({result.first_failure()}); going on")

    @staticmethod
    def _edges_replaced(props: dict[str, Any]) -> bool:
        before = configured(Path(props["inventory_dir"]))
        return any(before.get(name) not in (None, server) for name, server in props["edges"].items())

    def _join(self, props: dict[str, Any]) -> None:
        """The new VM converged on its own, its engine answering, then back into the edge's pools."""
        from llmcloud import converge, hostkeys
        from llmcloud.progress import Progress
        from llmcloud.provision.configure import ConfigureError, wait_for_host

        inventory_dir, host = Path(props["inventory_dir"]), props["host"]
        if host not in configured(inventory_dir):
            return  # a new stack or a new replica: Configure converges it with the rest
        if self._edges_replaced(props):
            _say(f"the edge was replaced too: {host} is converged with every host after the last engine VM")
            return
        progress = Progress(f"{host} replaced")
        hostkeys.forget_replaced(inventory_dir, {host: props["server"]})
        with progress.step(f"wait for {host}: SSH and cloud-init"):
            wait_for_host(inventory_dir, host, float(props["timeout"]))
        for what, playbook, extravars in (
            (f"converge {host} alone (site.yml), its engine answering", "site.yml", None),
            (f"put {host} back into the edge's pools", POOL_PLAYBOOK, {"llmcloud_pool": "in"}),
        ):
            with progress.step(what):
                result = converge.converge(inventory_dir, progress, playbook, extravars, limit=host)
                if not result.ok:
                    raise ConfigureError(
                        f"{host}: {result.first_failure()} (the other engine VMs were left as they are; "
                        "fix the cause and run `pulumi up` again, or by hand: "
                        f"ansible-playbook -i {inventory_dir} {playbook} --limit {host}"
                        f"{' -e llmcloud_pool=in' if extravars else ''})"
                    )


class PoolMember(Resource):
    """An engine VM serving in the edge's pools: left before the VM goes, joined once its replacement runs."""

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(PoolMemberProvider(), name, props, opts)
