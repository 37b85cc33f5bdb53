"""The Pulumi engine for tests, without downloads: the CLI and a test-bed OpenStack provider built from
their Go modules (pinned in testbed/pulumi/*/go.mod and go.sum), each built once and cached.

Users install the official Pulumi CLI and the official `openstack` plugin; only CI and the local cloud use
these builds. The Python language host is not served by the module proxy, so tests drive the program through
the Automation API with an inline program (automation.py), which needs no language host."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llmcloud.errors import UserError
from llmcloud.local.peers import find_go
from llmcloud.progress import Progress
from testbed.venv import cache_lock, cache_root

HERE = Path(__file__).resolve().parent / "pulumi"
CLI_MODULE = HERE / "cli"
PROVIDER_MODULE = HERE / "provider"
#: Our own host for Python dynamic providers (Pulumi's CLI distribution ships one; a Go build has none).
DYNAMIC_HOST_DIR = HERE / "bin"
CLI_PACKAGE = "github.com/pulumi/pulumi/pkg/v3"


@dataclass(frozen=True)
class Engine:
    """Where the built CLI and plugins are, and the environment that makes Pulumi use only them."""

    cli_root: Path  # <root>/bin/pulumi, as pulumi.automation.PulumiCommand expects
    provider: Path
    provider_version: str
    pulumi_home: Path

    @property
    def cli(self) -> Path:
        return self.cli_root / "bin" / "pulumi"

    def env(self) -> dict[str, str]:
        venv_bin = Path(sys.executable).parent
        return {
            "PULUMI_HOME": str(self.pulumi_home),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            # The dynamic-provider host and this venv's python first on PATH.
            "PATH": os.pathsep.join(
                [str(DYNAMIC_HOST_DIR), str(venv_bin), str(self.cli.parent), os.environ.get("PATH", "")]
            ),
            "PULUMI_RUNTIME_VIRTUALENV": str(venv_bin.parent),
        }


def module_version(go_mod: Path, module: str) -> str:
    for line in go_mod.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in (module, "require") and module in parts:
            return parts[parts.index(module) + 1]
    raise UserError(f"{go_mod} does not require {module}", "restore the file from git")


def sdk_plugin_version() -> str:
    """The `openstack` plugin version the pinned pulumi_openstack SDK asks the engine for."""
    import pulumi_openstack

    meta = Path(pulumi_openstack.__file__).parent / "pulumi-plugin.json"
    return json.loads(meta.read_text())["version"].lstrip("v")


def _digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _go() -> str:
    go = find_go()
    if not go:
        raise UserError(
            "Go is not installed (needed to build the Pulumi CLI and provider)",
            "install Go 1.25 or newer (e.g. /usr/local/go), or put it on PATH",
        )
    return go


def _build(module: Path, package: str, output: Path, ldflags: str, what: str, progress: Progress) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".partial")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    progress.log(f"building {what} from its Go module (cold: several minutes; then cached)")
    result = subprocess.run(
        [_go(), "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), package],
        cwd=module,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = "\n    ".join(result.stderr.strip().splitlines()[-8:])
        raise UserError(f"building {what} failed", f"the Go error:\n    {tail}")
    tmp.rename(output)


def ensure_engine(progress: Progress | None = None) -> Engine:
    progress = progress or Progress("pulumi engine")
    with cache_lock("pulumi-engine"):
        return _ensure_engine(progress)


def _ensure_engine(progress: Progress) -> Engine:
    root = cache_root() / "pulumi"
    version = module_version(CLI_MODULE / "go.mod", CLI_PACKAGE)
    cli_root = root / f"cli-{version}-{_digest(CLI_MODULE / 'go.mod', CLI_MODULE / 'go.sum')}"
    if not (cli_root / "bin" / "pulumi").exists():
        _build(
            CLI_MODULE,
            f"{CLI_PACKAGE}/cmd/pulumi",
            cli_root / "bin" / "pulumi",
            f"-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version={version}",
            f"the Pulumi CLI {version}",
            progress,
        )
    plugin_version = sdk_plugin_version()
    provider_id = _digest(*(PROVIDER_MODULE / f for f in ("go.mod", "go.sum", "main.go")))
    provider = root / f"provider-{plugin_version}-{provider_id}" / "pulumi-resource-openstack"
    if not provider.exists():
        _build(
            PROVIDER_MODULE,
            ".",
            provider,
            f"-s -w -X main.version={plugin_version}",
            f"the test-bed OpenStack provider (plugin version {plugin_version})",
            progress,
        )
    engine = Engine(cli_root, provider, plugin_version, root / "home")
    _install_plugin(engine, provider_id)
    return engine


def _install_plugin(engine: Engine, provider_id: str) -> None:
    """Install the build under the version the SDK asks for, unless this very build is installed."""
    marker = engine.pulumi_home / f"openstack-{engine.provider_version}.installed"
    if marker.exists() and marker.read_text() == provider_id:
        return
    engine.pulumi_home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            str(engine.cli),
            "plugin",
            "install",
            "resource",
            "openstack",
            engine.provider_version,
            "--file",
            str(engine.provider),
            "--reinstall",
        ],
        env={**os.environ, **engine.env()},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise UserError(f"installing the openstack plugin failed: {result.stderr.strip()}", "see the message")
    marker.write_text(provider_id)


def provider_names(engine: Engine) -> dict:
    """Every token the built provider serves and its properties' Pulumi names (for the schema test)."""
    out = subprocess.run(
        [str(engine.provider), "--llmcloud-names"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)
