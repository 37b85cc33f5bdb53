"""daemon.json as data: the role's base settings, other roles' options, and the NVIDIA runtime, merged."""

import copy

NVIDIA_RUNTIME = {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}}


def deep_merge(base, extra):
    """``extra`` on top of ``base``: dicts merge key by key; anything else from ``extra`` wins."""
    merged = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def docker_daemon_config(
    options, log_max_size="50m", log_max_file=5, live_restore=True, nvidia_runtime=False
):
    base = {
        "log-driver": "json-file",
        "log-opts": {"max-size": str(log_max_size), "max-file": str(log_max_file)},
        "live-restore": bool(live_restore),
    }
    if nvidia_runtime:
        base["runtimes"] = copy.deepcopy(NVIDIA_RUNTIME)
    return deep_merge(base, options)


class FilterModule:
    def filters(self):
        return {"llmcloud_docker_daemon_config": docker_daemon_config}
