"""Filters and tests of the monitoring role."""

from __future__ import annotations


def has_gpu(host: str, hostvars) -> bool:
    """A host has a GPU when the nvidia role found one in this run, else when the inventory says it must."""
    found = hostvars[host].get("nvidia_gpu_present")
    if found is not None:
        return str(found).lower() in ("true", "1", "yes")
    return str(hostvars[host].get("nvidia_required", False)).lower() in ("true", "1", "yes")


class TestModule:
    def tests(self):
        return {"llmcloud_monitoring_has_gpu": has_gpu}
