"""The `llmcloud` command: local target hosts, converge and verify.

llmcloud local up [--topology single|split] [--engines N] [--hosts-only]
llmcloud local down | status [--json]
llmcloud converge [-i inventory/<stack>]
llmcloud verify   [-i inventory/<stack>]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from llmcloud import REPO_ROOT
from llmcloud.errors import UserError
from llmcloud.progress import Progress

DEFAULT_INVENTORY_ROOT = REPO_ROOT / "inventory"


def _stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stack", default="local", help="name of the local stack (default: local)")
    p.add_argument(
        "--inventory-root",
        type=Path,
        default=DEFAULT_INVENTORY_ROOT,
        help="where inventory/<stack>/ is written (default: ./inventory)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="llmcloud", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", required=True)

    local = sub.add_parser("local", help="target hosts as containers on this machine")
    lsub = local.add_subparsers(dest="action", required=True)
    up = lsub.add_parser("up", help="start hosts, write the inventory, converge, verify")
    _stack_args(up)
    up.add_argument(
        "--topology",
        choices=("single", "split"),
        default=None,
        help="single: one host in both groups (default); split: an edge plus engine hosts",
    )
    up.add_argument(
        "--engines", type=int, default=None, help="engine hosts in the split topology (default 1)"
    )
    up.add_argument(
        "--ssh-port", type=int, default=None, help="127.0.0.1 port of the first host's SSH (2222)"
    )
    up.add_argument("--http-port", type=int, default=None, help="127.0.0.1 port of the edge's HTTP (8080)")
    up.add_argument("--https-port", type=int, default=None, help="127.0.0.1 port of the edge's HTTPS (8443)")
    up.add_argument(
        "--idp-port",
        type=int,
        default=None,
        help="port of the local identity provider, on the stack's gateway (9400)",
    )
    up.add_argument("--hosts-only", action="store_true", help="start hosts and write the inventory only")
    down = lsub.add_parser("down", help="remove the hosts, network, volumes and inventory of a stack")
    _stack_args(down)
    down.add_argument("--purge-image", action="store_true", help="also remove the cached base image")
    lsub.add_parser("image", help="build the base image if needed; print its reference")
    status = lsub.add_parser("status", help="show the hosts of a stack")
    _stack_args(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    for name, text in (("converge", "apply site.yml to an inventory"), ("verify", "run tests/infra")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "-i",
            "--inventory",
            type=Path,
            default=DEFAULT_INVENTORY_ROOT / "local",
            help="inventory directory (default: inventory/local)",
        )
    return top


def _local_stack(args):
    """The stack as it was brought up (its state file), with the flags given now on top."""
    from llmcloud.local.stack import load

    stack = load(args.stack, args.inventory_root)
    keys = ("topology", "engines", "ssh_port", "http_port", "https_port", "idp_port")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if overrides.get("topology") == "single" and "engines" not in overrides:
        overrides["engines"] = 1
    return dataclasses.replace(stack, **overrides)  # re-validates the merged settings


def _print_summary(status: dict) -> None:
    print(f"\nstack {status['stack']} ({status['topology'] or 'down'})")
    for host in status["hosts"]:
        ports = ", ".join(f"{k}→{v}" for k, v in sorted(host["ports"].items()))
        print(f"  {host['host']:<8} {host['state']:<8} {ports}")
    if not status["ssh_config"]:
        return
    engine = status["engine"]
    print(f"\n  inventory: {status['inventory']}")
    print(f"  ssh:       ssh -F {status['ssh_config']} {engine['host']}")
    print(f"  re-run:    ansible-playbook -i {status['inventory']} site.yml")
    print(f"  backups:   make backup | backup-drill | restore INVENTORY={status['inventory']}")
    if status.get("url"):
        print(f"  endpoint:  {status['url']}  (log in as {status['login']['user']} at the provider's form)")
        print(f"  CA:        {status['ca_bundle']}  (the internal CA that signed the edge certificate)")
        print(f"  API key:   llmcloud local status --json --stack {status['stack']} | jq -r .api_key")
        print("  try:       key=$(llmcloud local status --json | jq -r .api_key)")
        print(f'             curl --cacert {status["ca_bundle"]} -H "Authorization: Bearer $key" \\')
        print(f"               {status['url']}v1/chat/completions -H 'Content-Type: application/json' \\")
        print('               -d \'{"model": "tgi", "messages": [{"role": "user", "content": "Hi"}]}\'')
    print(f"  engine:    {engine['note']}")


def main(argv: list[str] | None = None) -> int:
    from docker.errors import DockerException

    args = parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UserError as err:
        print(f"llmcloud: error: {err}", file=sys.stderr)
        return 2
    except DockerException as err:
        print(f"llmcloud: error: the Docker engine refused: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmcloud: interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from llmcloud import converge, verify

    if args.command == "converge":
        progress = Progress("converge")
        converge.converge_or_fail(args.inventory, progress)
        progress.summary()
        return 0
    if args.command == "verify":
        return verify.verify(args.inventory)

    if args.action == "image":
        from llmcloud.local import image, system

        progress = Progress("base image")
        print(image.ensure(system.docker_client(), progress))
        return 0
    stack = _local_stack(args)
    if args.action == "status":
        status = stack.status()
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            _print_summary(status)
        return 0
    if args.action == "down":
        progress = Progress(f"local down ({stack.name})")
        stack.down(progress)
        if args.purge_image:
            from llmcloud.local import image, system

            with progress.step("remove cached base images"):
                image.remove_all(system.docker_client())
        progress.summary()
        return 0

    progress = Progress(f"local up ({stack.name}, {stack.topology})")
    stack.up(progress)
    if not args.hosts_only:
        converge.converge_or_fail(stack.inventory_dir, progress)
        with progress.step("verify (tests/infra)"):
            if verify.verify(stack.inventory_dir) != 0:
                raise UserError(
                    "verification failed: see the test report above",
                    f"fix the cause, then `make converge verify INVENTORY={stack.inventory_dir}`",
                )
    progress.summary()
    _print_summary(stack.status())
    return 0


if __name__ == "__main__":
    sys.exit(main())
