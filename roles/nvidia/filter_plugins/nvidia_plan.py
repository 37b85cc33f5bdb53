"""The nvidia role's decisions as plain functions, so they are unit-tested without a GPU."""

import re

_GPU_LINE = re.compile(r"^\S+\s+03([0-9a-f]{2}):\s+10de:([0-9a-f]{4})", re.IGNORECASE | re.MULTILINE)


def nvidia_gpus(lspci_numeric):
    """NVIDIA display/3D controllers (class 03xx, vendor 10de) in `lspci -n` output, as device ids."""
    return [device for _, device in _GPU_LINE.findall(lspci_numeric or "")]


def nvidia_driver_packages(distribution, kernel, branch="570", ubuntu_method="package"):
    """Driver packages per OS. Ubuntu: the -server branch; Debian 12: non-free nvidia-driver plus headers."""
    if distribution == "Ubuntu":
        if ubuntu_method == "ubuntu-drivers":
            return ["ubuntu-drivers-common"]
        return [
            f"nvidia-headless-{branch}-server",
            f"nvidia-utils-{branch}-server",
            f"linux-headers-{kernel}",
        ]
    if distribution == "Debian":
        return ["nvidia-driver", "firmware-misc-nonfree", f"linux-headers-{kernel}", "nvidia-persistenced"]
    raise ValueError(f"no NVIDIA driver plan for {distribution}")


def nvidia_debian_components(distribution):
    """Debian ships the driver in non-free (and firmware in non-free-firmware); Ubuntu needs no change."""
    return ["main", "contrib", "non-free", "non-free-firmware"] if distribution == "Debian" else []


def nvidia_toolkit_repo(architecture, keyring, channel="stable"):
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[architecture]
    return f"deb [signed-by={keyring}] https://nvidia.github.io/libnvidia-container/{channel}/deb/{arch} /"


def nvidia_toolkit_packages(version):
    names = [
        "nvidia-container-toolkit",
        "nvidia-container-toolkit-base",
        "libnvidia-container-tools",
        "libnvidia-container1",
    ]
    return [f"{n}={version}" for n in names] if version else names


class FilterModule:
    def filters(self):
        return {
            "nvidia_gpus": nvidia_gpus,
            "nvidia_driver_packages": nvidia_driver_packages,
            "nvidia_debian_components": nvidia_debian_components,
            "nvidia_toolkit_repo": nvidia_toolkit_repo,
            "nvidia_toolkit_packages": nvidia_toolkit_packages,
        }
