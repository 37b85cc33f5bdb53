"""Every Debian package the test suites need, installed in one apt-get run before they start (`make test`).

Each part names its own packages where it uses them (and installs them there when missing); this gathers them
so that a fresh machine needs only the README's prerequisites, and suites running side by side never race for
dpkg's lock. Run as ``.venv/bin/python -m tests.packages``; it also starts the Docker engine.
"""

from __future__ import annotations

import sys

from llmcloud.errors import exit_code
from llmcloud.local import system
from llmcloud.local.engine_ollama import BUILD_PACKAGES as OLLAMA_BUILD
from llmcloud.local.peers import GO_PACKAGES, find_go
from llmcloud.progress import Progress
from testbed.controlplane import DEBIAN_PACKAGES as CLOUD

#: Pebble and its DNS server for the ACME test (tests/integration/pebble.py).
ACME = {"pebble": "pebble", "pebble-challtestsrv": "pebble"}
#: Debian's Chromium and its WebDriver for what people see (tests/integration/browser.py).
BROWSER = {"chromium": "chromium", "chromedriver": "chromium-driver"}
#: The local stack summary's `try:` example, run as printed (tests/integration/test_local_stack.py).
CLIENTS = {"curl": "curl"}
#: A real OpenSSH server for the host key tests (tests/unit/test_hostkeys.py).
SSH_SERVER = {"/usr/sbin/sshd": "openssh-server"}

ALL = {
    **system.LOCAL_PACKAGES,
    **({} if find_go() else GO_PACKAGES),
    **CLOUD,
    **OLLAMA_BUILD,
    **ACME,
    **BROWSER,
    **CLIENTS,
    **SSH_SERVER,
}


def main() -> int:
    progress = Progress("test packages")

    def install() -> None:
        with progress.step(
            f"Debian packages for the suites ({len(set(ALL.values()))}, installed when missing)"
        ):
            system.ensure_packages(ALL)
        with progress.step("Docker engine"):
            system.docker_engine()

    return exit_code(install)


if __name__ == "__main__":
    sys.exit(main())
