"""Run the llmcloud program against the local cloud with the real Pulumi engine (Automation API, inline
program).

The inline program calls the same `program()` that `__main__.py` calls; the Pulumi CLI, the openstack plugin
and the dynamic-provider host are the builds of pulumi_engine.py. The stack's settings come from the
unmodified `stacks/Pulumi.<stack>.yaml`, with the overrides a test gives (the cloud, secrets, configure)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from llmcloud import REPO_ROOT
from testbed.controlplane import Cloud
from testbed.pulumi_engine import Engine

PROJECT = "llmcloud"
#: The clouds.yaml entry of the seeded project's application credential.
CLOUD_NAME = "llmcloud-local"


class CloudStack:
    """One Pulumi stack of the llmcloud program on the local cloud, with its own workspace and inventory."""

    def __init__(
        self,
        name: str,
        *,
        cloud: Cloud,
        engine: Engine,
        source: str | None = None,
        overrides: dict[str, Any] | None = None,
        secrets_: dict[str, str] | None = None,
        inventory_root: Path | None = None,
    ):
        self.name = name
        self.cloud = cloud
        self.engine = engine
        self.workdir = cloud.work / "pulumi" / "workspaces" / name
        self.inventory_root = inventory_root or REPO_ROOT / "inventory"
        self.workdir.mkdir(parents=True, exist_ok=True)
        stack_file = REPO_ROOT / "stacks" / f"Pulumi.{source or name}.yaml"
        shutil.copyfile(stack_file, self.workdir / f"Pulumi.{name}.yaml")
        backend = cloud.work / "pulumi" / "state"
        backend.mkdir(parents=True, exist_ok=True)
        self.env = {
            **engine.env(),
            "PULUMI_BACKEND_URL": f"file://{backend}",
            "PULUMI_CONFIG_PASSPHRASE": _passphrase(cloud),
            "OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml),
        }
        # The inline program (and its preflight) runs in this process: it reads the same clouds.yaml.
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.clouds_yaml)
        options = auto.LocalWorkspaceOptions(
            work_dir=str(self.workdir),
            pulumi_home=str(engine.pulumi_home),
            pulumi_command=auto.PulumiCommand(root=str(engine.cli_root), skip_version_check=True),
            env_vars=self.env,
            project_settings=auto.ProjectSettings(name=PROJECT, runtime="python"),
        )
        self.stack = auto.create_or_select_stack(
            stack_name=name, project_name=PROJECT, program=self._program, opts=options
        )
        config = {"openstack:cloud": CLOUD_NAME, **(overrides or {})}
        self.set_config(config, secrets_ or {})

    @classmethod
    def provisioning_only(
        cls,
        name: str,
        *,
        ssh_public_key: str,
        overrides: dict[str, Any] | None = None,
        secrets_: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> CloudStack:
        """A stack for tests and benchmarks of provisioning: `configure` off, the given key for the `deploy`
        user, a placeholder OAuth client secret (no login is configured without `configure`)."""
        return cls(
            name,
            overrides={
                "llmcloud:configure": "false",
                "llmcloud:sshPublicKey": ssh_public_key,
                **(overrides or {}),
            },
            secrets_={"llmcloud:oauthClientSecret": "placeholder-client-secret", **(secrets_ or {})},
            **kwargs,
        )

    def _program(self) -> None:
        from llmcloud.provision.program import program

        program(inventory_root=self.inventory_root)

    @property
    def inventory_dir(self) -> Path:
        return self.inventory_root / self.name

    def set_config(self, values: dict[str, Any], secret_values: dict[str, str] | None = None) -> None:
        for key, value in values.items():
            text = value if isinstance(value, str) else json.dumps(value)
            self.stack.set_config(key, auto.ConfigValue(text), path=False)
        for key, value in (secret_values or {}).items():
            self.stack.set_config(key, auto.ConfigValue(value, secret=True))

    def remove_config(self, *keys: str) -> None:
        for key in keys:
            self.stack.remove_config(key)

    def preview(self, on_output: Callable[[str], None] | None = None) -> auto.PreviewResult:
        return self.stack.preview(on_output=on_output, color="never", diff=False)

    def up(self, on_output: Callable[[str], None] | None = None) -> auto.UpResult:
        return self.stack.up(on_output=on_output, color="never")

    def destroy(
        self, exclude_protected: bool = False, on_output: Callable[[str], None] | None = None
    ) -> auto.DestroyResult:
        return self.stack.destroy(on_output=on_output, color="never", exclude_protected=exclude_protected)

    def outputs(self) -> dict[str, Any]:
        return {k: v.value for k, v in self.stack.outputs().items()}

    def reset(self) -> None:
        """Delete whatever an earlier, interrupted run left in this stack, protected resources too."""
        if not self.stack.export_stack().deployment.get("resources"):
            return

        def cli(*args: str, check: bool = True) -> None:
            subprocess.run(
                [str(self.engine.cli), *args, "--yes", "--stack", self.name],
                cwd=self.workdir,
                env={**os.environ, **self.env},
                check=check,
                capture_output=True,
            )

        cli("cancel", check=False)  # the lock an interrupted run left behind, if any
        cli("state", "unprotect", "--all")
        self.destroy()

    def remove(self) -> None:
        """Forget the stack (its state), after its resources are gone."""
        self.stack.workspace.remove_stack(self.name, force=True)


def _passphrase(cloud: Cloud) -> str:
    """The passphrase of the local state's secrets: generated once per cloud, kept in its work dir (0600)."""
    path = cloud.work / "pulumi" / "passphrase"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text()


class Lines(list):
    """Collects the engine's output (and echoes it, so a failing run shows in the test report)."""

    def __bool__(self) -> bool:  # Pulumi skips a falsy callback, and an empty list is falsy
        return True

    def __call__(self, line: str) -> None:
        print(line)
        self.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self)
