"""The cloud's volumes on this machine: a sparse file per Cinder volume, attached to a server as a loop device
under the name a KVM guest sees (``/dev/disk/by-id/virtio-<first 20 characters of the id>``)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def volume_file(workdir: Path, volume_id: str) -> Path:
    return Path(workdir).resolve() / "data" / "volumes" / f"{volume_id}.img"


def virtio_name(volume_id: str) -> str:
    """The guest's name for a virtio disk: its serial, which Nova sets to the volume id (20 chars kept)."""
    return f"/dev/disk/by-id/virtio-{volume_id[:20]}"


def ensure_volume_file(path: Path, size_gb: int) -> Path:
    """The volume's backing file: sparse, so a 200 GB volume costs only what is written to it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        with open(path, "wb") as f:
            f.truncate(size_gb * 1024**3)
        path.chmod(0o600)
    return path


def _losetup(*args: str) -> str:
    return subprocess.run(["losetup", *args], check=True, capture_output=True, text=True).stdout.strip()


def attach_loop(path: Path) -> str:
    """The loop device over ``path``: the one already there, or a new one."""
    return _losetup("--find", "--show", "--nooverlap", str(path))


def loops_of(path: Path) -> list[str]:
    if not path.exists():
        return []
    return _losetup("--associated", str(path), "--noheadings", "--output", "NAME").split()


def detach_loops(path: Path, wait: float = 15.0) -> bool:
    """Detach every loop device over ``path``; True once none is left.

    A file system still mounted in a stopped container's namespace keeps its loop device (it detaches when the
    kernel lets go, and writes its last blocks first): wait for that, so nobody touches the file before.
    """
    deadline = time.monotonic() + wait
    while loops := loops_of(path):
        for loop in loops:
            subprocess.run(["losetup", "--detach", loop], capture_output=True)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
