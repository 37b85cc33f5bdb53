"""`llmcloud-testbed`: a local OpenStack cloud (real services, a fake hypervisor) for the tests.

llmcloud-testbed prepare [--start-cloud DIR]          build the services' venv and the Pulumi engine, once
llmcloud-testbed up [--port-base N] | down | status [--json]          the cloud
llmcloud-testbed pulumi STACK preview|up|destroy [--config k=v]       the program on it, the real engine
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from llmcloud.errors import UserError, exit_code
from llmcloud.progress import Progress


def parser() -> argparse.ArgumentParser:
    from testbed.configs import Ports
    from testbed.controlplane import DEFAULT_WORKDIR

    top = argparse.ArgumentParser(prog="llmcloud-testbed", description=__doc__.split("\n")[0])
    csub = top.add_subparsers(dest="action", required=True)
    workdir = {
        "type": Path,
        "default": DEFAULT_WORKDIR,
        "help": f"state, logs, pids (default {DEFAULT_WORKDIR})",
    }
    up = csub.add_parser("up", help="start the cloud from a clean state and seed a de.NBI-like project")
    up.add_argument("--workdir", **workdir)
    up.add_argument(
        "--port-base",
        type=int,
        default=Ports.base,
        help=f"first of the 127.0.0.1 ports the cloud uses (default {Ports.base}; it uses 25 from there)",
    )
    up.add_argument(
        "--no-boot",
        action="store_true",
        help="no hypervisor: servers become ACTIVE without booting (no Docker needed)",
    )
    prepare = csub.add_parser(
        "prepare", help="build what the cloud and its tests need, once: the services' venv, the Pulumi engine"
    )
    prepare.add_argument(
        "--no-packages",
        action="store_true",
        help="skip the Debian packages (e.g. while another apt-get runs)",
    )
    prepare.add_argument(
        "--start-cloud",
        type=Path,
        metavar="WORKDIR",
        help="also start a cloud there once its venv is ready (before the Go builds), for the tests to reuse",
    )
    prepare.add_argument("--port-base", type=int, default=27300, help="ports of that cloud (default 27300)")
    down = csub.add_parser("down", help="stop every process of the cloud and remove its state")
    down.add_argument("--workdir", **workdir)
    status = csub.add_parser("status", help="the cloud's processes, ports and logs")
    status.add_argument("--workdir", **workdir)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    pulumi = csub.add_parser("pulumi", help="run a stack of stacks/ on the cloud with the Pulumi engine")
    pulumi.add_argument("--workdir", **workdir)
    pulumi.add_argument("stack", help="a stack of stacks/ (Pulumi.<stack>.yaml)")
    pulumi.add_argument("operation", choices=("preview", "up", "destroy", "outputs"))
    pulumi.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable)"
    )
    pulumi.add_argument(
        "--secret", action="append", default=[], metavar="KEY=VALUE", help="set a secret setting (repeatable)"
    )
    pulumi.add_argument("--exclude-protected", action="store_true", help="destroy: keep protected resources")
    return top


def _cloud(args) -> int:
    from testbed.controlplane import Cloud

    if args.action == "prepare":
        from llmcloud.local.system import ensure_packages
        from testbed.controlplane import DEBIAN_PACKAGES
        from testbed.pulumi_engine import ensure_engine
        from testbed.venv import services_venv

        progress = Progress("llmcloud-testbed prepare")
        if not args.no_packages:
            with progress.step("Debian packages (MariaDB, RabbitMQ, memcached, qemu-utils)"):
                ensure_packages(DEBIAN_PACKAGES)
        with progress.step("OpenStack services' venv"):
            services_venv(progress)
        if args.start_cloud:
            try:
                with progress.step(f"start a cloud in {args.start_cloud} for the tests"):
                    # Without its hypervisor: that needs the hosts' base image, which the other suites
                    # build meanwhile; the tests start it when they need it (Cloud.start_hypervisor).
                    Cloud(args.start_cloud).up(
                        args.port_base, progress, install_packages=not args.no_packages, boot=False
                    )
            except UserError as err:  # the tests start one themselves then
                progress.log(f"not started: {err}")
        with progress.step("Pulumi CLI and the test-bed OpenStack provider (Go builds, cached)"):
            ensure_engine(progress)
        progress.summary()
        return 0
    cloud = Cloud(args.workdir)
    if args.action == "up":
        progress = Progress("llmcloud-testbed up")
        cloud.up(args.port_base, progress, boot=not args.no_boot)
        progress.summary()
        _print_cloud(cloud)
        return 0
    if args.action == "down":
        cloud.down()
        return 0
    if args.action == "status":
        services = [dataclasses.asdict(s) for s in cloud.services()]
        if args.json:
            vms = hypervisor_status(cloud.work)
            print(
                json.dumps(
                    {
                        "workdir": str(cloud.work),
                        "up": cloud.is_up(),
                        "services": services,
                        "hypervisor": vms,
                    },
                    indent=2,
                )
            )
        else:
            _print_cloud(cloud)
        return 0 if cloud.is_up() else 3
    return _cloud_pulumi(cloud, args)


def hypervisor_status(workdir: Path) -> dict | None:
    from testbed import hypervisor

    return hypervisor.status(workdir)


def _print_cloud(cloud) -> None:
    services = cloud.services()
    if not services:
        print(f"no local cloud in {cloud.work} (start one: llmcloud-testbed up)")
        return
    print(f"local cloud in {cloud.work}: {'up' if cloud.is_up() else 'DEGRADED'}")
    for s in services:
        port = f"127.0.0.1:{s.port}" if s.port else ""
        print(f"  {s.name:<18} pid {s.pid:<8} {'running' if s.alive else 'DEAD':<8} {port:<16} {s.log}")
    vms = hypervisor_status(cloud.work)
    if vms is not None:
        age = time.time() - vms["updated"]
        print(f"\n  servers booted as target hosts (hypervisor, checked {age:.0f}s ago):")
        if vms.get("error"):
            print(f"    last check FAILED: {vms['error']}")
        for vm in vms["vms"]:
            where = ", ".join(vm["addresses"] + [f"floating {a}" for a in vm["floating"]])
            print(f"    {vm['name']:<24} {vm['state']:<8} {vm['container'] or '-':<26} {where}")
            if vm.get("error"):
                print(f"      error: {vm['error']}")
        if not vms["vms"]:
            print("    none (no ACTIVE server)")
    print(f"\n  clouds.yaml: {cloud.clouds_yaml}  (export OS_CLIENT_CONFIG_FILE=<it>)")
    print("  clouds:      llmcloud-local (the project's application credential), llmcloud-local-admin")


def _cloud_pulumi(cloud, args) -> int:
    from testbed.automation import CloudStack
    from testbed.pulumi_engine import ensure_engine

    def pairs(items: list[str], flag: str) -> dict[str, str]:
        out = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UserError(f"{flag} {item!r} is not KEY=VALUE", f"e.g. {flag} llmcloud:configure=false")
            out[key] = value
        return out

    cloud.settings()  # fails clearly when no cloud is up
    progress = Progress(f"pulumi {args.operation} ({args.stack})")
    engine = ensure_engine(progress)
    stack = CloudStack(
        args.stack,
        cloud=cloud,
        engine=engine,
        overrides=pairs(args.config, "--config"),
        secrets_=pairs(args.secret, "--secret"),
    )
    from pulumi.automation import CommandError

    try:
        if args.operation == "preview":
            stack.preview(on_output=print)
        elif args.operation == "up":
            stack.up(on_output=print)
        elif args.operation == "destroy":
            stack.destroy(exclude_protected=args.exclude_protected, on_output=print)
    except CommandError:
        # The engine's output, diagnostics included, was printed as it came.
        print(f"llmcloud: error: pulumi {args.operation} of {args.stack} failed (see above)", file=sys.stderr)
        return 1
    print(json.dumps(stack.outputs(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return exit_code(lambda: _cloud(args))


if __name__ == "__main__":
    sys.exit(main())
