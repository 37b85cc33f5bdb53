"""The machine running the local stack: root commands, Debian packages, the Docker engine."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from llmcloud.errors import UserError

DOCKERD_LOG = Path("/var/log/llmcloud-dockerd.log")
#: How long a Docker engine we started may take to answer (its first start sets up its storage).
DOCKERD_START_S = 120
#: How long apt-get waits for another package manager to finish before it gives up.
APT_LOCK_WAIT_S = 900
#: What `llmcloud local up` needs on this machine ({command: Debian package}), installed when missing:
#: the Docker engine, debootstrap for the hosts' base image, and ssh for Ansible and the summary's commands.
LOCAL_PACKAGES = {"dockerd": "docker.io", "debootstrap": "debootstrap", "ssh": "openssh-client"}


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
    with _APT:  # steps side by side share one apt-get
        _ensure_packages(packages)


_APT = threading.Lock()


def _ensure_packages(packages: dict[str, str]) -> None:
    missing = sorted({pkg for cmd, pkg in packages.items() if not _which(cmd)})
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise UserError(
            f"missing {', '.join(missing)} and this machine has no apt-get",
            f"install {', '.join(missing)} with your package manager",
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt-get or dpkg (an unattended upgrade, a second llmcloud) holds dpkg's lock: wait for it.
    lock = ["-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"]
    print(f"llmcloud: installing {', '.join(missing)} (apt-get)", file=sys.stderr, flush=True)
    run_root(["apt-get", *lock, "update", "-qq"], "apt-get update", env=env)
    run_root(
        ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *missing],
        f"installing {', '.join(missing)} (apt-get; a wait for dpkg's lock ends after {APT_LOCK_WAIT_S}s)",
        env=env,
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
            raise _docker_permission() from None
    docker_engine()
    client = docker.from_env(timeout=300)
    client.ping()
    return client


def docker_engine() -> None:
    """Make sure a Docker engine answers, installing and starting it when needed.

    Only the standard library and the docker command: it runs before the venv exists (`make local`)."""
    state = _docker_info()
    if state == "up":
        return
    if state == "denied":
        raise _docker_permission()
    ensure_packages({"dockerd": LOCAL_PACKAGES["dockerd"]})
    _start_dockerd()
    deadline = time.monotonic() + DOCKERD_START_S
    while time.monotonic() < deadline:
        if _docker_info() == "up":
            return
        time.sleep(1)
    raise UserError(
        f"the Docker engine did not answer within {DOCKERD_START_S}s of starting it",
        f"start it yourself (`sudo systemctl start docker`, or `sudo dockerd`) and read {DOCKERD_LOG}",
    )


def _docker_info() -> str:
    """'up', 'denied' (the engine runs, this user may not use it) or 'down'."""
    if not shutil.which("docker"):
        return "down"
    info = subprocess.run(["docker", "info", "--format", "{{.ID}}"], capture_output=True, text=True)
    if info.returncode == 0:
        return "up"
    return "denied" if "permission denied" in info.stderr.lower() else "down"


def _docker_permission() -> UserError:
    return UserError(
        "the Docker engine runs, but this user may not use it (permission denied on its socket)",
        "run as root, or `sudo usermod -aG docker $USER` and log in again",
    )


def docker_cli(args: list[str], what: str) -> str:
    """Run the docker command (as this user, like the SDK); its output, or a UserError naming ``what``."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise UserError(f"{what} failed: {' | '.join(tail)}", "see the message above")
    return done.stdout


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


class Ran(NamedTuple):
    exit_code: int
    output: bytes


def run_in(container, argv: list[str], **kwargs) -> Ran:
    """``container.exec_run(argv)`` whose output is never lost: its stdout and stderr, together.

    The Docker engine drops a short-lived exec's output now and then when several execs run at once (Debian
    12's docker.io with containerd 1.6: 11 of 2400 `readlink -f` execs came back empty with exit 0, 4
    containers, 8 threads; containerd#5741). The output goes to a file in the container instead and comes back
    as a tar archive, which is an ordinary response, not the exec's attached stream."""
    path = f"/tmp/.llmcloud-exec-{uuid.uuid4().hex}"
    redirected = ["sh", "-c", 'out=$1; shift; exec "$@" >"$out" 2>&1', "sh", path, *argv]
    done = container.exec_run(redirected, **kwargs)
    try:
        chunks, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            member = tar.next()
            output = tar.extractfile(member).read() if member else b""
    finally:
        container.exec_run(["rm", "-f", path])
    return Ran(done.exit_code, output)


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
