"""The machine running the local stack: root commands, Debian packages, the Docker engine."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

from llmcloud.errors import UserError

DOCKERD_LOG = Path("/var/log/llmcloud-dockerd.log")


def as_root(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return cmd
    if shutil.which("sudo"):
        return ["sudo", "--non-interactive", *cmd]
    raise UserError(
        f"`{cmd[0]}` needs root and sudo is not installed",
        "run as root, or install sudo and give your user passwordless sudo",
    )


def run_root(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(as_root(cmd), check=True, text=True, capture_output=True, **kwargs)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-3:]
        raise UserError(f"{what} failed: {' | '.join(tail) or exc}", "see the message above") from None


def port_taken(port: int, address: str = "127.0.0.1") -> bool:
    """Whether another program holds ``address:port`` (TCP), so a listener of ours could not bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return True
    return False


def ensure_packages(packages: dict[str, str]) -> None:
    """Install Debian/Ubuntu packages when the named command is missing ({command: package}).

    A key that is an absolute path (a header, say) stands for a file the package installs."""
    missing = sorted({pkg for cmd, pkg in packages.items() if not _which(cmd)})
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise UserError(
            f"missing {', '.join(missing)} and this machine has no apt-get",
            f"install {', '.join(missing)} with your package manager",
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run_root(["apt-get", "update", "-qq"], "apt-get update", env={**os.environ, **env})
    run_root(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        f"installing {', '.join(missing)}",
        env={**os.environ, **env},
    )


def _which(cmd: str) -> str | None:
    if cmd.startswith("/"):
        return cmd if Path(cmd).exists() else None
    # debootstrap and dockerd live in sbin, which is not on every user's PATH.
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin:/usr/local/sbin")


def docker_client():
    """Return a docker SDK client for a running engine, starting the engine if needed."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except DockerException as exc:
        if "Permission denied" in str(exc):
            raise UserError(
                "the Docker engine runs, but this user may not use it (permission denied on its socket)",
                "run as root, or `sudo usermod -aG docker $USER` and log in again",
            ) from None
    ensure_packages({"dockerd": "docker.io"})
    _start_dockerd()
    deadline = time.monotonic() + 60
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = docker.from_env(timeout=300)
            client.ping()
            return client
        except DockerException as exc:
            last = exc
            time.sleep(1)
    raise UserError(
        f"the Docker engine did not start within 60s ({last})",
        f"start it yourself (`sudo systemctl start docker`, or `sudo dockerd`) and read {DOCKERD_LOG}",
    )


def _start_dockerd() -> None:
    # Prefer the service manager; where it refuses (containers, policy-rc.d), run dockerd directly.
    if shutil.which("systemctl") and Path("/run/systemd/system").is_dir():
        started = subprocess.run(as_root(["systemctl", "start", "docker"]), capture_output=True)
        if started.returncode == 0:
            return
    dockerd = _which("dockerd")
    if not dockerd:
        raise UserError("dockerd is not installed", "install the docker.io package")
    subprocess.Popen(
        as_root(["sh", "-c", f"exec {dockerd} >>{DOCKERD_LOG} 2>&1"]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def tar_of(files: dict[str, tuple[bytes | None, int, int]]) -> bytes:
    """A tar of {path: (content, or None for a directory; mode; owner uid = gid)}, for `put_archive`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (data, mode, uid) in files.items():
            info = tarfile.TarInfo(path)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, int(time.time())
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
