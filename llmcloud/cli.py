"""The `llmcloud` command: local target hosts, converge and verify.

llmcloud local up [--topology single|split] [--engines N] [--engine double|ollama] [--extra-model NAME]
                  [--hosts-only]
llmcloud local ollama                        build the real engine's image and tiny model (once)
llmcloud local open-webui                    build the chat UI's local image (Open WebUI from PyPI, once)
llmcloud local down | status [--json | --api-key]
llmcloud converge [-i inventory/<stack>]
llmcloud verify   [-i inventory/<stack>]
llmcloud versions [--json]                   every pinned component, its version and where it is pinned

The local OpenStack cloud the tests provision on is the test bed's: `llmcloud-testbed` (testbed/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from llmcloud import REPO_ROOT
from llmcloud.errors import UserError, exit_code
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
    _local_parser(sub)
    for name, text in (("converge", "apply site.yml to an inventory"), ("verify", "run tests/infra")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "-i",
            "--inventory",
            type=Path,
            default=DEFAULT_INVENTORY_ROOT / "local",
            help="inventory directory (default: inventory/local)",
        )
    usage = sub.add_parser("usage", help="who used how many tokens (the edge's usage database)")
    usage.add_argument("-i", "--inventory", type=Path, default=DEFAULT_INVENTORY_ROOT / "local")
    usage.add_argument("--by", choices=("principal", "model", "day", "group"), default="principal")
    usage.add_argument("--since", help="7d, 30d or YYYY-MM-DD (UTC days; default 30d)")
    usage.add_argument(
        "--reveal",
        metavar="FILE",
        help="with pseudonymous records: show these people (one e-mail per line; - for stdin) by e-mail",
    )
    shown = usage.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true")
    shown.add_argument("--csv", action="store_true")
    versions = sub.add_parser("versions", help="every pinned component, its version and where it is pinned")
    versions.add_argument("--json", action="store_true", help="machine-readable output")
    watch = sub.add_parser("status", help="the deployment on one screen, from its Prometheus")
    watch.add_argument(
        "-i",
        "--inventory",
        type=Path,
        default=DEFAULT_INVENTORY_ROOT / "local",
        help="inventory directory (default: inventory/local)",
    )
    watch.add_argument("--json", action="store_true", help="machine-readable output")
    watch.add_argument(
        "--prometheus-url",
        help="ask this Prometheus (e.g. http://127.0.0.1:9090/prometheus/) instead of one reached over SSH",
    )
    return top


def _local_parser(sub) -> None:
    local = sub.add_parser("local", help="target hosts as containers on this machine")
    lsub = local.add_subparsers(dest="action", required=True)
    _up_args(lsub.add_parser("up", help="start hosts, write the inventory, converge, verify"))
    down = lsub.add_parser("down", help="remove the hosts, network, volumes and inventory of a stack")
    _stack_args(down)
    down.add_argument("--purge-image", action="store_true", help="also remove the cached base image")
    lsub.add_parser("image", help="build the base image if needed; print its reference")
    lsub.add_parser(
        "images",
        help="build every image the local stack and the local cloud use, if needed (base, VM, engine test "
        "double, oauth2-proxy, identity provider, chat UI); print their references",
    )
    lsub.add_parser(
        "ollama",
        help="build the real engine of --engine ollama if needed (Ollama from its Go module, about 10 "
        "minutes once; a tiny random model); print the image and the model file",
    )
    lsub.add_parser(
        "open-webui",
        help="build the chat UI's local image if needed (Open WebUI from PyPI, 1.5 GB, a few minutes once); "
        "print the image, its tarball, its size and the build time",
    )
    status = lsub.add_parser("status", help="show the hosts of a stack")
    _stack_args(status)
    shown = status.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="machine-readable output")
    shown.add_argument("--api-key", action="store_true", help="print only the demo API key (for scripts)")


def _up_args(up: argparse.ArgumentParser) -> None:
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
    up.add_argument(
        "--extra-model",
        dest="extra_models",
        action="append",
        default=None,
        metavar="NAME",
        help="one more model on every engine host (an engine TEST DOUBLE under this name), picked by the "
        "request's model field at the edge; repeat for more",
    )
    up.add_argument(
        "--engine",
        choices=("double", "ollama"),
        default=None,
        help="what serves the main model: double, the engine TEST DOUBLE (default, fast); ollama, a real "
        "Ollama built here from its Go module with a tiny random model (nonsense text, real engine; the "
        "first build takes about 10 minutes)",
    )
    up.add_argument(
        "--chat-ui",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the chat UI for people at / (Open WebUI; its image is built here from PyPI once, 1.5 GB, about "
        "2 minutes); on by default",
    )
    up.add_argument("--hosts-only", action="store_true", help="start hosts and write the inventory only")


def _local_stack(args):
    """The stack as it was brought up (its state file), with the flags given now on top."""
    from llmcloud.local.stack import load

    stack = load(args.stack, args.inventory_root)
    keys = (
        "topology",
        "engines",
        "ssh_port",
        "http_port",
        "https_port",
        "idp_port",
        "extra_models",
        "engine",
        "chat_ui",
    )
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if overrides.get("topology") == "single" and "engines" not in overrides:
        overrides["engines"] = 1
    return dataclasses.replace(stack, **overrides)  # re-validates the merged settings


def _print_summary(status: dict) -> None:
    """The stack, then commands that run as printed from the repository root in a new shell (tested)."""
    print(f"\nstack {status['stack']} ({status['topology'] or 'down'})")
    for host in status["hosts"]:
        ports = ", ".join(f"{k}→{v}" for k, v in sorted(host["ports"].items()))
        print(f"  {host['host']:<8} {host['state']:<8} {ports}")
    if not status["ssh_config"]:
        return
    engine, inv = status["engine"], _shown(status["inventory"])
    llmcloud = f"{VENV_BIN}/llmcloud"
    stack = status["stack"]
    if (root := Path(status["inventory"]).parent) != DEFAULT_INVENTORY_ROOT:
        stack += f" --inventory-root {_shown(str(root))}"
    print(f"\n  inventory: {inv}  (run the commands below in {REPO_ROOT})")
    print(f"  ssh:       ssh -F {_shown(status['ssh_config'])} {engine['host']}")
    print(f"  re-run:    {VENV_BIN}/ansible-playbook -i {inv} site.yml")
    print(f"  backups:   make backup INVENTORY={inv}  # also: make backup-drill, make restore")
    print(f"  watch:     {llmcloud} status -i {inv}  # or: make monitor INVENTORY={inv}")
    if status.get("url"):
        what = "the chat UI; " if status.get("chat_ui") else ""
        user = status["login"]["user"]
        ca = _shown(status["ca_bundle"])
        print(f"  endpoint:  {status['url']}  ({what}log in as {user} at the provider's form)")
        print(f"  CA:        {ca}  (the internal CA that signed the edge certificate)")
        print(f"  metrics:   {status['url']}prometheus/  (Prometheus; {user} is its admin here)")
        print(f"  API key:   {llmcloud} local status --stack {stack} --api-key")
        if len(status["models"]) > 1:
            print(f'  models:    {", ".join(status["models"])}  (the request\'s "model" picks one)')
        print(f"  try:       key=$({llmcloud} local status --stack {stack} --api-key)")
        print(f'             curl --cacert {ca} -H "Authorization: Bearer $key" \\')
        print(f"               {status['url']}v1/chat/completions -H 'Content-Type: application/json' \\")
        request = {
            "model": status["models"][0],
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 32,  # a real engine without it writes until its context is full
        }
        print(f"               -d '{json.dumps(request)}'")
    print(f"  engine:    {engine['note']}")


#: The venv's tools as the summary prints them: not on PATH in a new shell.
VENV_BIN = ".venv/bin"


def _shown(path: str) -> str:
    """A path as the summary prints it: relative to the repository root when inside it."""
    try:
        return str(Path(path).relative_to(REPO_ROOT)) or "."
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    from docker.errors import DockerException

    args = parser().parse_args(argv)

    def dispatch() -> int:
        try:
            return _dispatch(args)
        except DockerException as err:
            raise UserError(f"the Docker engine refused: {err}") from None

    return exit_code(dispatch)


def _dispatch(args) -> int:
    from llmcloud import converge, verify

    if args.command == "converge":
        progress = Progress("converge")
        converge.converge_or_fail(args.inventory, progress)
        progress.summary()
        return 0
    if args.command == "verify":
        return verify.verify(args.inventory)
    if args.command == "usage":
        from llmcloud import usage

        rows = usage.report(args.inventory, args.by, args.since, args.reveal)
        if args.json:
            print(json.dumps(rows, indent=2))
        elif args.csv:
            print(usage.as_csv(rows, args.by), end="")
        else:
            print(usage.render(rows, args.by))
        return 0
    if args.command == "versions":
        from llmcloud import versions

        found = versions.pins()
        print(json.dumps(versions.as_dicts(found), indent=2) if args.json else versions.render(found))
        return 0
    if args.command == "status":
        from llmcloud import status

        figures = status.status(args.inventory, args.prometheus_url)
        print(json.dumps(figures, indent=2) if args.json else status.render(figures, args.inventory.name))
        return 0
    if args.action in ("image", "images", "ollama", "open-webui"):
        return _build(args.action)
    return _local(args)


def _build(action: str) -> int:
    """`llmcloud local image|images|ollama|open-webui`: build what the local stack needs, once."""
    if action == "image":
        from llmcloud.local import image, system

        return image.main()
    if action == "images":
        from llmcloud.local import image, system
        from llmcloud.local.artifacts import build_images

        progress = Progress("images")
        built = build_images(progress)
        vm = image.ensure_vm(system.docker_client(), progress)
        for ref in (built.base, vm, built.double[0], built.oauth2_proxy[0], built.idp, built.open_webui[0]):
            print(ref)
        return 0
    if action == "ollama":
        from llmcloud.local import engine_ollama, image, system

        progress = Progress("Ollama")
        print(engine_ollama.ensure(system.docker_client(), progress, image.IMAGE_CACHE)[0])
        print(engine_ollama.tiny_model(progress, REPO_ROOT / ".cache" / "models")[0])
        return 0
    from llmcloud.local import image, peers, system

    progress = Progress("Open WebUI")
    client = system.docker_client()
    began = time.monotonic()
    ref, tarball = peers.open_webui(client, progress, image.ensure(progress), image.IMAGE_CACHE)
    size = client.images.get(ref).attrs["Size"]
    print(f"{ref}\n{tarball}\nsize {size / 1e9:.2f} GB, built or found in {time.monotonic() - began:.0f} s")
    return 0


def _local(args) -> int:
    """`llmcloud local status|down|up`."""
    from llmcloud import converge, verify

    stack = _local_stack(args)
    if args.action == "status":
        status = stack.status()
        if args.api_key:
            if not status.get("api_key"):
                raise UserError(
                    f"stack {stack.name!r} has no inventory with an API key yet",
                    f"bring it up first: make local STACK={stack.name}",
                )
            print(status["api_key"])
        elif args.json:
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
