"""The Debian 12 systemd base image for local target hosts, built with debootstrap.

The image looks like a fresh cloud VM: systemd as PID 1, sshd, python3, sudo and a ``deploy`` user,
and no SSH host keys (each host gets its own before first boot). It is tagged with a hash of this
recipe, so a second ``make local`` reuses it and a changed recipe builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from llmcloud import REPO_ROOT
from llmcloud.errors import UserError, exit_code
from llmcloud.local import peers, system
from llmcloud.progress import Progress

#: Image tarballs for the hosts' preload path and the builds' locks (git-ignored).
IMAGE_CACHE = REPO_ROOT / ".cache" / "images"

REPOSITORY = "llmcloud/debian12-systemd"
SUITE = "bookworm"
DEPLOY_UID = 1000
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "sudo",
    "iproute2",
    "ca-certificates",
)
SOURCES_LIST = (
    "deb http://deb.debian.org/debian bookworm main\n"
    "deb http://deb.debian.org/debian bookworm-updates main\n"
    "deb http://deb.debian.org/debian-security bookworm-security main\n"
)
# Files written into the root file system after debootstrap: {path: (mode, content)}.
FILES = {
    "etc/apt/sources.list": (0o644, SOURCES_LIST),
    "etc/sudoers.d/deploy": (0o440, "deploy ALL=(ALL) NOPASSWD:ALL\n"),
    # Host keys are injected per host; only the ed25519 one exists.
    "etc/ssh/sshd_config.d/00-llmcloud-hostkey.conf": (
        0o644,
        "HostKey /etc/ssh/ssh_host_ed25519_key\n",
    ),
    "etc/machine-id": (0o444, ""),  # empty: systemd makes one per container at first boot
}
CHROOT_COMMANDS = (
    ["useradd", "--create-home", "--uid", str(DEPLOY_UID), "--shell", "/bin/bash", "deploy"],
    ["apt-get", "clean"],
)
CHANGES = ['CMD ["/lib/systemd/systemd"]', "ENV container=docker"]


def recipe_hash() -> str:
    recipe = {
        "suite": SUITE,
        "packages": PACKAGES,
        "files": {k: [m, c] for k, (m, c) in FILES.items()},
        "chroot": CHROOT_COMMANDS,
        "changes": CHANGES,
        "variant": "minbase",
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def image_ref() -> str:
    return f"{REPOSITORY}:{recipe_hash()}"


def ensure(progress) -> str:
    """Return the base image reference, building it when this recipe has no image yet.

    Only the standard library and the docker command: `make local` builds it beside the venv
    (``python3 -m llmcloud.local.image``). One build at a time; a second caller waits and finds it."""
    ref = image_ref()
    if _present(ref):
        progress.log(f"base image {ref} is cached")
        return ref
    with peers.build_lock(IMAGE_CACHE, "base-image", progress, "the base image"):
        if _present(ref):
            progress.log(f"base image {ref} is cached")
            return ref
        _build(ref, progress)
    return ref


def _present(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def _build(ref: str, progress) -> None:
    system.ensure_packages({"debootstrap": system.LOCAL_PACKAGES["debootstrap"]})
    workdir = Path(tempfile.mkdtemp(prefix="llmcloud-rootfs-", dir="/var/tmp"))
    rootfs = workdir / "rootfs"
    tarball = workdir / "rootfs.tar"
    try:
        with progress.step(f"debootstrap Debian 12 into {rootfs} (about a minute)"):
            system.run_root(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(rootfs),
                ],
                "debootstrap",
            )
        with progress.step("customise the root file system"):
            _customise(rootfs)
        with progress.step(f"import {ref}"):
            system.run_root(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], "tar rootfs")
            # Tagged only once the import is whole: an interrupted build leaves no image to reuse.
            changes = [arg for change in CHANGES for arg in ("--change", change)]
            system.docker_cli(["import", *changes, str(tarball), ref], f"docker import of {ref}")
    finally:
        system.run_root(["rm", "-rf", "--one-file-system", str(workdir)], "cleanup")


def _customise(rootfs: Path) -> None:
    for command in CHROOT_COMMANDS:
        system.run_root(["chroot", str(rootfs), *command], f"chroot {' '.join(command)}")
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        system.run_root(["rm", "-f", str(key)], "remove build-time host keys")
    for rel, (mode, content) in FILES.items():
        with tempfile.NamedTemporaryFile("w", delete=False) as tmp:
            tmp.write(content)
        system.run_root(["install", "-m", oct(mode)[2:], tmp.name, str(rootfs / rel)], f"write {rel}")
        Path(tmp.name).unlink()


def remove_all(client) -> list[str]:
    removed = []
    for image in client.images.list(name=REPOSITORY):
        for tag in image.tags:
            client.images.remove(tag)
            removed.append(tag)
    return removed


# ---- the cloud VM image: what the local OpenStack cloud boots for a server (testbed/hypervisor.py)
VM_REPOSITORY = "llmcloud/debian12-cloud"
#: Like a distribution's cloud image: cloud-init (NoCloud seed), a generated locale, no `deploy` user (the
#: stack's user data makes it) and no SSH host keys (cloud-init makes them on first boot).
VM_STEPS = (
    "apt-get update -qq",
    "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cloud-init locales",
    "sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen && locale-gen",
    "userdel deploy && rm -rf /home/deploy /etc/sudoers.d/deploy",
    # The seed comes from the cloud's API; the network is set up by the hypervisor, as Neutron's DHCP would.
    "printf 'datasource_list: [NoCloud, None]\\nnetwork: {config: disabled}\\n'"
    " > /etc/cloud/cloud.cfg.d/90-llmcloud.cfg",
    "mkdir -p /var/lib/cloud/seed/nocloud",
    "rm -rf /var/lib/cloud/instances /var/lib/cloud/instance /var/lib/cloud/data /var/log/cloud-init*",
    "rm -f /etc/ssh/ssh_host_* && truncate -s 0 /etc/machine-id",
    # The package lists stay, as in the base image: roles refresh them when older than an hour.
    "apt-get clean",
)


def vm_image_ref() -> str:
    digest = hashlib.sha256(json.dumps([image_ref(), VM_STEPS, CHANGES]).encode()).hexdigest()[:12]
    return f"{VM_REPOSITORY}:{digest}"


def ensure_vm(client, progress) -> str:
    """Return the cloud VM image, deriving it from the base image when this recipe has none yet."""
    from docker.errors import ImageNotFound

    ref = vm_image_ref()
    try:
        client.images.get(ref)
        progress.log(f"VM image {ref} is cached")
        return ref
    except ImageNotFound:
        pass
    base = ensure(progress)
    with progress.step(f"derive {ref} (cloud-init from Debian's archive, about 30 s)"):
        container = client.containers.run(base, ["sleep", "infinity"], detach=True, remove=False)
        try:
            for step in VM_STEPS:
                result = container.exec_run(["sh", "-ec", step])
                if result.exit_code != 0:
                    tail = result.output.decode(errors="replace").strip().splitlines()[-3:]
                    raise UserError(
                        f"building {ref}: `{step}` failed (exit {result.exit_code}): {' | '.join(tail)}",
                        "the step needs Debian's archive (deb.debian.org) from inside a container",
                    )
            repository, tag = ref.split(":")
            container.commit(repository=repository, tag=tag, changes=CHANGES)
        finally:
            container.remove(force=True)
    return ref


def main() -> int:
    """Build (or find) the base image and print its reference: `make local` runs this beside the venv."""
    progress = Progress("base image")

    def build() -> None:
        with progress.step("Docker engine"):
            system.docker_engine()
        with progress.step("base image (Debian 12 + systemd, debootstrap)"):
            print(ensure(progress))

    return exit_code(build)


if __name__ == "__main__":
    sys.exit(main())
