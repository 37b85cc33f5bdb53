"""Engine hosts (group llm): Docker, the model server container, where it listens, and its secrets."""

from __future__ import annotations

import json

import pytest
from conftest import in_group, reachable_from


@pytest.fixture
def engine(host, hostvars):
    if not in_group(hostvars, "llm"):
        pytest.skip("not an engine host")
    name = hostvars.get("llm_engine_container_name", "llm-engine")
    return json.loads(host.check_output("docker inspect %s", name))[0]


def test_docker_active_and_daemon_json_valid(host, hostvars):
    if not in_group(hostvars, "llm"):
        pytest.skip("not an engine host")
    assert host.service("docker").is_running
    assert host.service("docker").is_enabled
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["log-driver"] == "json-file" and config["log-opts"]["max-size"]
    assert config["live-restore"] is True
    # The daemon really runs with it.
    assert host.check_output("docker info --format '{{.LoggingDriver}}'") == "json-file"


def test_engine_running_healthy_with_restart_policy(engine):
    assert engine["State"]["Running"] is True
    assert engine["State"]["Health"]["Status"] == "healthy"
    assert engine["HostConfig"]["RestartPolicy"]["Name"] in ("always", "unless-stopped")


def test_engine_port_bound_only_where_it_should(host, hostvars, engine):
    bindings = engine["HostConfig"]["PortBindings"]
    host_ips = {b["HostIp"] for ports in bindings.values() for b in ports}
    expected = "127.0.0.1" if in_group(hostvars, "edge") else hostvars["private_ip"]
    assert host_ips == {expected}, f"engine published on {host_ips}, expected only {expected}"
    port = int(hostvars.get("llm_engine_port", 8080))
    listening = host.socket(f"tcp://{expected}:{port}")
    assert listening.is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_engine_reachable_from_edge_and_from_no_other_host(host, hostvars, peers, runner):
    if not in_group(hostvars, "llm") or in_group(hostvars, "edge"):
        pytest.skip("the engine of a host that is its own edge listens on 127.0.0.1 only")
    port = int(hostvars.get("llm_engine_port", 8080))
    edge = [
        p for p in peers if p.remote is not None and "edge" in runner.get_variables(p.name)["group_names"]
    ]
    others = [p for p in peers if p.remote is not None and p not in edge]
    assert edge, "no edge host in the inventory"
    assert all(reachable_from(edge, hostvars["private_ip"], port).values()), (
        "the edge cannot reach the engine"
    )
    assert not any(reachable_from(others, hostvars["private_ip"], port).values()), (
        "a non-edge host reaches it"
    )


#: Each engine's readiness route (Ollama has no /health).
HEALTH_PATHS = {"tgi": "/health", "vllm": "/health", "tei": "/health", "ollama": "/api/version"}


def test_engine_serves_health_locally(host, hostvars):
    if not in_group(hostvars, "llm"):
        pytest.skip("not an engine host")
    address = "127.0.0.1" if in_group(hostvars, "edge") else hostvars["private_ip"]
    port = int(hostvars.get("llm_engine_port", 8080))
    path = HEALTH_PATHS[hostvars.get("llm_engine_kind", "tgi")]
    code = f"import urllib.request as u; print(u.urlopen('http://{address}:{port}{path}', timeout=5).status)"
    assert host.check_output("python3 -c %s", code) == "200"


def test_engine_serves_its_model(host, hostvars):
    """The model the inventory names is the one the engine serves (OpenAI's model list)."""
    if not in_group(hostvars, "llm"):
        pytest.skip("not an engine host")
    address = "127.0.0.1" if in_group(hostvars, "edge") else hostvars["private_ip"]
    port = int(hostvars.get("llm_engine_port", 8080))
    url = f"http://{address}:{port}/v1/models"
    code = f"import json, urllib.request as u; print(json.dumps(json.load(u.urlopen({url!r}, timeout=5))))"
    model = hostvars.get("llm_engine_model_id")
    if not model:
        pytest.skip("the inventory names no model (llm_engine_model_id): the role's default is served")
    served = [m["id"] for m in json.loads(host.check_output("python3 -c %s", code))["data"]]
    # Ollama lists a model with its tag (":latest" when none was given).
    assert model in served or f"{model}:latest" in served, served


def test_model_cache_on_the_data_path(hostvars, engine):
    data_dir = hostvars.get("llm_engine_data_dir", "/srv/llmcloud")
    sources = {m["Destination"]: m["Source"] for m in engine["Mounts"]}
    env = dict(item.split("=", 1) for item in engine["Config"]["Env"])
    assert sources[env["HF_HOME"]] == f"{data_dir}/models"


def test_no_secret_in_inspect_or_readable_by_others(host, hostvars, engine):
    token = hostvars.get("llm_engine_hf_token")
    if token:
        assert token not in json.dumps(engine), "the HF token shows in docker inspect"
    token_file = host.file("/etc/llmcloud/engine/hf_token")
    assert token_file.user == "root" and token_file.mode == 0o600
    assert host.file("/etc/llmcloud/engine").mode == 0o700


def test_metrics_port_not_published(engine):
    published = {p.split("/")[0] for p in engine["HostConfig"]["PortBindings"]}
    assert "9000" not in published  # TGI's Prometheus port stays inside


def test_more_models_run_privately_each_in_its_own_engine(host, hostvars):
    """llmcloud_extra_models: each model meant for this host has its engine, healthy, on its port, private."""
    if not in_group(hostvars, "llm"):
        pytest.skip("not an engine host")
    here = hostvars["inventory_hostname"]
    models = [m for m in hostvars.get("llmcloud_extra_models") or [] if here in m.get("hosts", [])]
    if not models:
        pytest.skip("this host serves no more models (llmcloud_extra_models)")
    address = "127.0.0.1" if in_group(hostvars, "edge") else hostvars["private_ip"]
    main_port = int(hostvars.get("llm_engine_port", 8080))
    assert len({main_port, *(int(m["port"]) for m in models)}) == len(models) + 1, "two engines share a port"
    for model in models:
        name = model.get("container_name", f"llm-engine-{model['port']}")
        engine = json.loads(host.check_output("docker inspect %s", name))[0]
        assert engine["State"]["Running"] and engine["State"]["Health"]["Status"] == "healthy", name
        assert engine["Config"]["Labels"]["org.llmcloud.model"] == model["model_id"]
        bindings = {b["HostIp"] for ports in engine["HostConfig"]["PortBindings"].values() for b in ports}
        assert bindings == {address}, f"{name} published on {bindings}, expected only {address}"
        assert host.socket(f"tcp://{address}:{model['port']}").is_listening
        assert not host.socket(f"tcp://0.0.0.0:{model['port']}").is_listening


def test_no_engine_left_of_a_removed_model(host, hostvars):
    """An engine container of a model taken out of llmcloud_extra_models does not keep running."""
    if not in_group(hostvars, "llm"):
        pytest.skip("not an engine host")
    here = hostvars["inventory_hostname"]
    models = [m for m in hostvars.get("llmcloud_extra_models") or [] if here in m.get("hosts", [])]
    expected = {hostvars.get("llm_engine_container_name", "llm-engine")} | {
        m.get("container_name", f"llm-engine-{m['port']}") for m in models
    }
    listing = "docker ps -a --filter label=org.llmcloud.role=llm_engine --format '{{.Names}}'"
    running = set(host.check_output(listing).split())
    assert running == expected
