"""Decisions the roles make in Python filters: tested here because no test host has a GPU."""

from __future__ import annotations

import importlib.util
import json

import pytest

from llmcloud import REPO_ROOT


def load(role: str, name: str):
    path = REPO_ROOT / "roles" / role / "filter_plugins" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{role}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nvidia = load("nvidia", "nvidia_plan")
docker = load("docker", "docker_daemon")

LSPCI = """\
00:00.0 0600: 8086:1237 (rev 02)
00:04.0 0302: 10de:1eb8 (rev a1)
00:05.0 0300: 10de:2204 (rev a1)
00:05.1 0403: 10de:1aef (rev a1)
00:06.0 0200: 1af4:1000
"""


def test_gpus_are_nvidia_display_or_3d_controllers_only():
    # A T4 (3D controller) and a consumer card (VGA); its HDMI audio function is not a GPU.
    assert nvidia.nvidia_gpus(LSPCI) == ["1eb8", "2204"]
    assert nvidia.nvidia_gpus("00:02.0 0300: 1234:1111\n") == []
    assert nvidia.nvidia_gpus("") == []


@pytest.mark.parametrize(
    ("distribution", "method", "expected"),
    [
        (
            "Ubuntu",
            "package",
            ["nvidia-headless-570-server", "nvidia-utils-570-server", "linux-headers-6.8.0-45-generic"],
        ),
        ("Ubuntu", "ubuntu-drivers", ["ubuntu-drivers-common"]),
        (
            "Debian",
            "package",
            [
                "nvidia-driver",
                "firmware-misc-nonfree",
                "linux-headers-6.8.0-45-generic",
                "nvidia-persistenced",
            ],
        ),
    ],
)
def test_driver_packages_per_os(distribution, method, expected):
    assert nvidia.nvidia_driver_packages(distribution, "6.8.0-45-generic", "570", method) == expected


def test_unknown_os_has_no_driver_plan():
    with pytest.raises(ValueError, match="Rocky"):
        nvidia.nvidia_driver_packages("Rocky", "5.14", "570")


def test_debian_needs_non_free_components_and_ubuntu_none():
    assert nvidia.nvidia_debian_components("Debian") == ["main", "contrib", "non-free", "non-free-firmware"]
    assert nvidia.nvidia_debian_components("Ubuntu") == []


def test_toolkit_repository_and_pins():
    line = nvidia.nvidia_toolkit_repo("x86_64", "/etc/apt/keyrings/nvidia.asc")
    repo = "https://nvidia.github.io/libnvidia-container/stable/deb/amd64 /"
    assert line == f"deb [signed-by=/etc/apt/keyrings/nvidia.asc] {repo}"
    assert "/deb/arm64 /" in nvidia.nvidia_toolkit_repo("aarch64", "/k")
    assert "nvidia-container-toolkit=1.18.0-1" in nvidia.nvidia_toolkit_packages("1.18.0-1")
    assert "nvidia-container-toolkit" in nvidia.nvidia_toolkit_packages("")


def test_daemon_json_base_settings():
    config = docker.docker_daemon_config({})
    assert config == {
        "log-driver": "json-file",
        "log-opts": {"max-size": "50m", "max-file": "5"},
        "live-restore": True,
    }


def test_daemon_json_merges_nvidia_and_other_roles_without_losing_either():
    options = {"log-opts": {"max-size": "10m"}, "registry-mirrors": ["https://mirror.example.org"]}
    config = docker.docker_daemon_config(options, nvidia_runtime=True)
    assert config["runtimes"] == {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}}
    assert config["log-opts"] == {"max-size": "10m", "max-file": "5"}  # merged, not replaced
    assert config["registry-mirrors"] == ["https://mirror.example.org"]
    json.dumps(config)  # still valid JSON
    # A role adding its own runtime keeps NVIDIA's.
    more = docker.docker_daemon_config(
        {"runtimes": {"runsc": {"path": "/usr/bin/runsc"}}}, nvidia_runtime=True
    )
    assert set(more["runtimes"]) == {"nvidia", "runsc"}


def test_daemon_json_merge_leaves_inputs_alone():
    options = {"log-opts": {"max-size": "10m"}}
    docker.docker_daemon_config(options, nvidia_runtime=True)
    assert options == {"log-opts": {"max-size": "10m"}}


# ---- edge ------------------------------------------------------------------------------------------
api_keys = load("oauth2_proxy", "api_keys")
upstreams = load("nginx", "nginx_upstreams")


def test_api_keys_reach_the_host_as_hashes_only():
    import hashlib

    key = "llmc_" + "k" * 40
    entry = api_keys.llmcloud_api_key_entry({"name": "ci", "key": key})
    assert entry == {"name": "ci", "sha256": hashlib.sha256(key.encode()).hexdigest()}
    assert key not in json.dumps(entry)
    digest = "A" * 64
    assert api_keys.llmcloud_api_key_entry({"name": "ops", "sha256": digest}) == {
        "name": "ops",
        "sha256": "a" * 64,
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "ci", "key": "short"}, "llmc_"),
        ({"name": "ci", "key": "sk-" + "x" * 40}, "llmc_"),
        ({"name": "bad name", "key": "llmc_" + "x" * 40}, "name 'bad name'"),
        ({"name": "ci", "sha256": "not-hex"}, "64 hex digits"),
        ({"name": "ci"}, "64 hex digits"),
    ],
)
def test_bad_api_key_entries_name_the_problem_without_the_key(entry, message):
    with pytest.raises(ValueError, match=message) as err:
        api_keys.llmcloud_api_key_entry(entry)
    if entry.get("key", "").startswith("llmc_"):
        assert entry["key"] not in str(err.value)


def test_engine_pool_uses_loopback_on_its_own_host_and_private_addresses_elsewhere():
    assert upstreams.llmcloud_upstream(("10.0.0.5", "node1"), "node1") == "127.0.0.1"
    assert upstreams.llmcloud_upstream(("10.0.0.7", "llm2"), "edge1") == "10.0.0.7"
    with pytest.raises(ValueError, match="llm3 has no private_ip"):
        upstreams.llmcloud_upstream(("", "llm3"), "edge1")


rate_limits = load("nginx", "rate_limits")


def test_a_key_keeps_its_own_limit_and_keys_of_one_limit_share_a_zone():
    entry = api_keys.llmcloud_api_key_entry(
        {"name": "lab", "key": "llmc_" + "x" * 40, "rate_limit_rps": 2, "rate_limit_burst": 0}
    )
    assert entry["rate_limit_rps"] == 2 and entry["rate_limit_burst"] == 0
    keys = [
        {"name": "default", "sha256": "0" * 64},
        entry,
        {"name": "lab2", "sha256": "1" * 64, "rate_limit_rps": 2, "rate_limit_burst": 0},
        {"name": "fast", "sha256": "2" * 64, "rate_limit_rps": 100},  # burst: the default's
    ]
    plan = rate_limits.llmcloud_rate_classes(keys, 20, 200)
    assert plan["classes"] == [{"rps": 20, "burst": 200}, {"rps": 2, "burst": 0}, {"rps": 100, "burst": 200}]
    assert plan["keys"] == {"lab": 1, "lab2": 1, "fast": 2}  # "default" is in class 0


@pytest.mark.parametrize("limit", [{"rate_limit_rps": 0}, {"rate_limit_rps": "5"}, {"rate_limit_burst": -1}])
def test_a_bad_key_limit_names_the_key_and_the_field(limit):
    with pytest.raises(ValueError) as err:
        api_keys.llmcloud_api_key_entry({"name": "lab", "key": "llmc_" + "x" * 40, **limit})
    assert "oauth2_proxy_api_keys[lab]" in str(err.value) and next(iter(limit)) in str(err.value)
    assert "llmc_" not in str(err.value)


upstreams = load("nginx", "nginx_upstreams")
engines = load("monitoring", "engines")

HOSTVARS = {"edge1": {"private_ip": "10.0.0.10"}, "llm1": {"private_ip": "10.0.0.11"}, "llm2": {}}


def test_each_more_model_gets_its_own_pool_and_the_main_engine_keeps_its_names():
    hostvars = {**HOSTVARS, "llm2": {"private_ip": "10.0.0.12"}}
    models = [
        {"model_id": "BAAI/bge-small-en-v1.5", "port": 8081, "hosts": ["llm1", "llm2"], "kind": "tei"},
        {"model_id": "org/coder", "port": 8082, "hosts": ["llm2"]},
    ]
    plan = upstreams.llmcloud_model_pools(
        models, ["Qwen/Qwen2.5", "sql-lora"], hostvars, "edge1", ["llm1", "llm2"]
    )
    assert plan["routes"] == {"Qwen/Qwen2.5": 0, "sql-lora": 0, "BAAI/bge-small-en-v1.5": 1, "org/coder": 2}
    assert [p["servers"] for p in plan["pools"]] == [["10.0.0.11:8081", "10.0.0.12:8081"], ["10.0.0.12:8082"]]
    assert plan["configured"] == [["Qwen/Qwen2.5", "sql-lora"], ["BAAI/bge-small-en-v1.5"], ["org/coder"]]
    # A host that is its own edge reaches its engines on 127.0.0.1.
    single = [{"model_id": "e/embed", "port": 8081, "hosts": ["node1"]}]
    plan = upstreams.llmcloud_model_pools(single, ["m/a"], {"node1": {}}, "node1", ["node1"])
    assert plan["pools"][0]["servers"] == ["127.0.0.1:8081"]


def test_an_ollama_model_is_routed_by_the_name_ollama_lists_too():
    """Ollama serves llmcloud/tiny as llmcloud/tiny:latest and lists that name in /v1/models."""
    models = [
        {"model_id": "llmcloud/tiny", "port": 8081, "hosts": ["llm1"], "kind": "ollama"},
        {"model_id": "llama3.2:1b", "port": 8082, "hosts": ["llm1"], "kind": "ollama"},
        {"model_id": "org/chat", "port": 8083, "hosts": ["llm1"]},
    ]
    plan = upstreams.llmcloud_model_pools(models, ["m/main"], HOSTVARS, "edge1", ["llm1", "llm2"])
    assert plan["routes"] == {
        "m/main": 0,
        "llmcloud/tiny": 1,
        "llmcloud/tiny:latest": 1,
        "llama3.2:1b": 2,  # tagged already
        "org/chat": 3,  # not Ollama: its name only
    }


@pytest.mark.parametrize(
    ("models", "named"),
    [
        ([{"model_id": "a/b", "port": 8081}], "lacks hosts"),
        ([{"model_id": "m/main", "port": 8081, "hosts": ["llm1"]}], "served twice"),
        ([{"model_id": "a/b", "port": 8081, "hosts": ["llm9"]}], "unknown: ['llm9']"),
        ([{"model_id": "a/b", "port": 8081, "hosts": []}], "hosts must name hosts of group llm"),
        (["a/b"], "must be a mapping"),
    ],
)
def test_bad_models_are_refused_naming_the_entry(models, named):
    with pytest.raises(upstreams.AnsibleFilterError, match="nginx_models\\[0\\]") as refused:
        upstreams.llmcloud_model_pools(models, ["m/main"], HOSTVARS, "edge1", ["llm1", "llm2"])
    assert named in str(refused.value)


def test_prometheus_watches_every_engine_and_probes_those_without_metrics():
    hostvars = {
        "llm1": {"llm_engine_kind": "vllm", "llm_engine_model_id": "m/chat", "llm_engine_port": 8080},
        "llm2": {"llm_engine_kind": "ollama", "llm_engine_model_id": "llama3.1:8b"},
    }
    models = [{"model_id": "e/embed", "kind": "tei", "port": 8081, "hosts": ["llm2"]}]
    found = engines.llmcloud_engine_targets(["llm1", "llm2"], hostvars, models, 8080)
    assert found == [
        {"host": "llm1", "port": 8080, "kind": "vllm", "model": "m/chat", "probe": None},
        {"host": "llm2", "port": 8080, "kind": "ollama", "model": "llama3.1:8b", "probe": "/"},
        {"host": "llm2", "port": 8081, "kind": "tei", "model": "e/embed", "probe": "/health"},
    ]


def test_engine_pins_live_in_the_role_defaults_and_its_readme_repeats_them():
    import yaml

    defaults = yaml.safe_load((REPO_ROOT / "roles/llm_engine/defaults/main.yml").read_text())
    images = defaults["llm_engine_images"]
    readme = (REPO_ROOT / "roles/llm_engine/README.md").read_text()
    for kind, image in images.items():
        shown = image.replace("{{ 'cuda' if llm_engine_gpus | bool else 'cpu' }}", "cpu")
        assert f"`{shown}`" in readme, f"the README does not show the {kind} pin {shown}"
