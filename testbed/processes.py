"""The test cloud's processes: are they alive, stop them, what listens where, and the programs they run."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from llmcloud.errors import UserError
from llmcloud.local.system import port_taken
from testbed.configs import Configs, Ports, Settings

if TYPE_CHECKING:
    from testbed.controlplane import Cloud

#: Where the services start (their glue modules are importable from here).
HERE = Path(__file__).resolve().parent
DATABASES = (
    "keystone",
    "placement",
    "glance",
    "neutron",
    "cinder",
    "nova_api",
    "nova",
    "nova_cell0",
    "manila",
)


class CloudError(UserError):
    pass


class Launcher:
    """Starts the cloud's processes and waits for them: each in a session of its own, its pid and log below
    the cloud's work dir."""

    def __init__(self, cloud: Cloud, settings: Settings, configs: Configs):
        self.cloud = cloud
        self.settings = settings
        self.configs = configs
        self.ports = settings.ports
        self.venv = Path(settings.venv)
        self.bin = self.venv / "bin"

    # -- processes
    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        log = self.cloud.logs / f"{name}.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=HERE,
                env={**os.environ, "PYTHONPATH": str(HERE), **(env or {})},
                start_new_session=True,  # its own process group: `down` stops its workers too
            )
        (self.cloud.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def check(self, argv: list[str], what: str, log: str, env: dict[str, str] | None = None) -> None:
        path = self.cloud.logs / log
        with open(path, "ab") as out:
            result = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=HERE
            )
        if result.returncode != 0:
            raise CloudError(f"{what} failed (exit {result.returncode}); see {path}", _tail(path))

    def api(
        self, name: str, port: int, module: str, args: str = "", env: dict[str, str] | None = None
    ) -> None:
        self.start(
            name,
            [
                str(self.bin / "gunicorn"),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--threads",
                "4",
                "--timeout",
                "300",
                # One request per connection. The OpenStack provider keeps idle connections without limit and
                # does not retry a POST, so a server that closes idle ones (gunicorn: after 2 s) races the
                # provider's next request on them: "connection reset by peer" fails `pulumi up` now and then.
                "--keep-alive",
                "0",
                "--name",
                name,
                "--access-logfile",
                str(self.cloud.logs / f"{name}-access.log"),
                "wsgi_host:application",
            ],
            env={"WSGI_NAME": name, "WSGI_TARGET": module, "WSGI_ARGV": args, **(env or {})},
        )

    def wait_http(self, name: str, port: int, path: str = "/", timeout: float = 120) -> None:
        pidfile = self.cloud.run_dir / f"{name}.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).close()
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                pass
            if not _alive(int(pidfile.read_text())):
                log = self.cloud.logs / f"{name}.out"
                raise CloudError(f"{name} exited while starting; see {log}", _tail(log))
            time.sleep(0.3)
        raise CloudError(
            f"{name} did not answer on 127.0.0.1:{port} within {timeout:.0f} s",
            f"see {self.cloud.logs / (name + '.out')}",
        )

    def sql(self, statement: str) -> str:
        return subprocess.run(
            ["mariadb", f"--defaults-file={self.configs.etc / 'my.cnf'}", "-N", "-e", statement],
            capture_output=True,
            text=True,
        ).stdout.strip()

    def wait_sql(self, statement: str, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sql(statement) not in ("", "0"):
                return
            time.sleep(0.3)
        raise CloudError(f"{what} not seen within {timeout:.0f} s", f"see the logs in {self.cloud.logs}")

    def bootstrap(self, *args: str) -> None:
        self.check(
            [str(self.bin / "python"), str(HERE / "bootstrap.py"), str(self.cloud.settings_file), *args],
            f"bootstrap {' '.join(args)}",
            "bootstrap.log",
        )

    def conf(self, service: str, name: str | None = None) -> str:
        return str(self.configs.etc / service / (name or f"{service}.conf"))

    # -- the sequence
    def sql_file(self, script: str) -> None:
        # Through stdin, so the password is never on a command line.
        result = subprocess.run(
            ["mariadb", f"--defaults-file={self.configs.etc / 'my.cnf'}"],
            input=script,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise CloudError(f"creating the databases failed: {result.stderr.strip()}", "see the message")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` still runs (zombies aside)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.getpgid(int(proc.name)) == pgid and _alive(int(proc.name)):
                    return True
            except ProcessLookupError:
                continue
    return False


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (services start in sessions of their own), else the process."""
    try:
        os.killpg(pid, sig)
        return
    except ProcessLookupError:
        pass
    except PermissionError:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _check_ports_free(ports: Ports) -> None:
    for name, port in ports.all().items():
        if port_taken(port):
            raise CloudError(
                f"port {port} ({name}) on 127.0.0.1 is taken by another program",
                f"stop that program, or give the cloud other ports: llmcloud-testbed up --port-base N "
                f"(it uses N..N+{max(Ports.OFFSETS.values())}; now {ports.base})",
            )


def _listener_pid(port: int) -> int | None:
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    return None


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"see {path}"
    return "last lines of the log:\n    " + "\n    ".join(text[-lines:])


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _group() -> str:
    import grp

    return grp.getgrgid(os.getegid()).gr_name


def _which(cmd: str) -> str | None:
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin:/usr/local/sbin")


def _sbin(cmd: str) -> str:
    found = shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin")
    if not found:
        raise CloudError(f"{cmd} not found", "apt-get install mariadb-server rabbitmq-server memcached")
    return found


def _rabbitmq_sbin() -> str:
    candidates = sorted(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/sbin"))
    if not candidates:
        raise CloudError(
            "RabbitMQ's scripts not found in /usr/lib/rabbitmq", "apt-get install rabbitmq-server"
        )
    return str(candidates[-1])
