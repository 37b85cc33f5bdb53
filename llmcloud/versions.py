"""Every pinned component, its version and the file that pins it (`llmcloud versions`, `make versions`).

Read from the pins themselves, so the list cannot drift from them: the container images and tool versions in
the roles' defaults, the Python packages in pyproject.toml, the Go modules in their go.mod files, the PyPI
peers of the local stack in their requirements.txt, and the test bed's OpenStack services.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from llmcloud import REPO_ROOT

#: The Go modules whose version is the component's (the rest of each go.mod is their closure).
GO_MODULES = {
    "llmcloud/local/peers/oauth2-proxy/go.mod": ["github.com/oauth2-proxy/oauth2-proxy/v7"],
    "testbed/pulumi/cli/go.mod": ["github.com/pulumi/pulumi/pkg/v3"],
    "testbed/pulumi/provider/go.mod": [
        "github.com/pulumi/pulumi-terraform-bridge/v3",
        "github.com/terraform-provider-openstack/terraform-provider-openstack/v3",
    ],
}
#: PyPI packages pinned in sets of their own: the local stack's peers' images, and the test tools that each
#: have a venv (tests/tools.py).
PYPI_PEERS = {
    "llmcloud/local/peers/open-webui/requirements.txt": ["open-webui"],
    "llmcloud/local/peers/oidc-mock/requirements.txt": ["oidc-provider-mock"],
    # sslyze holds its own cryptography back (< 47): listed, so that it is seen.
    "tests/tools/sslyze.txt": ["sslyze", "cryptography"],
}
_TEMPLATE = re.compile(r"\{\{.*?\}\}")


@dataclass(frozen=True)
class Pin:
    kind: str  # image, tool, python, go, pypi, go toolchain, openstack
    component: str
    version: str
    where: str  # the file that pins it, relative to the repository


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def _image(value: str) -> tuple[str, str]:
    """(name, tag) of an image reference; a templated part of the tag is shown as <...>."""
    name, _, tag = value.rpartition(":")
    return name, _TEMPLATE.sub("<...>", tag)


def role_pins() -> list[Pin]:
    """Container images (`*_image`, `*_images`) and versions (`*_version`) in the roles' defaults."""
    found = []
    for defaults in sorted(REPO_ROOT.glob("roles/*/defaults/main.yml")):
        where = _rel(defaults)
        for key, value in (yaml.safe_load(defaults.read_text()) or {}).items():
            images = value.items() if key.endswith("_images") and isinstance(value, dict) else []
            if key.endswith("_image") and isinstance(value, str) and not value.startswith("{{"):
                images = [(None, value)]
            for _, ref in images:
                name, tag = _image(ref)
                found.append(Pin("image", name, tag, where))
            if key.endswith("_version") and isinstance(value, str) and value:
                found.append(Pin("tool", key.removesuffix("_version"), value, where))
    return found


def python_pins() -> list[Pin]:
    """The direct Python dependencies (pyproject.toml; requirements.txt pins their whole closure)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [
        r for group in project["optional-dependencies"].values() for r in group
    ]
    pins = []
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        pins.append(Pin("python", name.strip(), version.split(";")[0].strip(), "pyproject.toml"))
    return pins


def go_pins() -> list[Pin]:
    pins = []
    for path, modules in GO_MODULES.items():
        text = (REPO_ROOT / path).read_text()
        toolchain = re.search(r"^go (\S+)$", text, re.M)
        if toolchain:
            pins.append(Pin("go toolchain", f"go ({Path(path).parent.name})", toolchain.group(1), path))
        for module in modules:
            version = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", text, re.M)
            pins.append(Pin("go", module, version.group(1) if version else "?", path))
    return pins


def pypi_peer_pins() -> list[Pin]:
    pins = []
    for path, packages in PYPI_PEERS.items():
        text = (REPO_ROOT / path).read_text()
        for package in packages:
            version = re.search(rf"^{re.escape(package)}==(\S+)$", text, re.M)
            pins.append(Pin("pypi", package, version.group(1) if version else "?", path))
    services = REPO_ROOT / "testbed" / "requirements-openstack.txt"
    for package in ("nova", "neutron", "keystone", "cinder", "glance", "manila", "swift"):
        version = re.search(rf"^{package}==(\S+)$", services.read_text(), re.M)
        if version:
            pins.append(Pin("openstack", package, version.group(1), _rel(services)))
    return pins


def pins() -> list[Pin]:
    return role_pins() + python_pins() + go_pins() + pypi_peer_pins()


def render(found: list[Pin]) -> str:
    widths = [max(len(getattr(p, f)) for p in found) for f in ("kind", "component", "version")]
    lines = [f"{'kind':<{widths[0]}}  {'component':<{widths[1]}}  {'version':<{widths[2]}}  pinned in"]
    for p in found:
        lines.append(
            f"{p.kind:<{widths[0]}}  {p.component:<{widths[1]}}  {p.version:<{widths[2]}}  {p.where}"
        )
    return "\n".join(lines)


def as_dicts(found: list[Pin]) -> list[dict[str, str]]:
    return [asdict(p) for p in found]
