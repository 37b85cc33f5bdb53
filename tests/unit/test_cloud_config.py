"""The local cloud's configs and the program's preflight plan, without starting anything."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

import pytest

from llmcloud.config import parse
from llmcloud.provision.preflight import plan
from testbed.configs import Configs, Ports, Settings, render_ini
from testbed.controlplane import Cloud, CloudError
from tests.unit.test_config import BASE


def settings(tmp_path: Path, base: int = 27100) -> Settings:
    venv = tmp_path / "venv"
    pastes = {
        "glance": "glance-api-paste.ini",
        **{s: "api-paste.ini" for s in ("nova", "neutron", "cinder", "manila")},
    }
    for service, paste in pastes.items():
        (venv / "etc" / service).mkdir(parents=True, exist_ok=True)
        (venv / "etc" / service / paste).write_text("[pipeline:main]\n")
    return Settings(str(tmp_path / "work"), str(venv), base, "dbpw", "svcpw", "adminpw", "mqpw")


def test_ports_are_distinct_and_follow_the_base():
    ports = Ports(30000).all()
    assert len(set(ports.values())) == len(ports)
    assert min(ports.values()) == 30000 and max(ports.values()) < 30025
    assert Ports(30000).keystone == 30010


def test_render_ini_writes_booleans_the_oslo_way():
    assert render_ini({"a": {"x": True, "y": 3}}) == "[a]\nx = true\ny = 3\n"


def test_every_listener_is_loopback_and_every_config_is_private(tmp_path):
    s = settings(tmp_path, 31000)
    configs = Configs(s)
    configs.write()
    written = sorted(p for p in (tmp_path / "work" / "etc").rglob("*") if p.is_file())
    assert len(written) == 19  # 13 service configs, ML2's, 5 API pipelines
    for path in written:
        text = path.read_text()
        assert "0.0.0.0" not in text, path
        if "paste" not in path.name:
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others (passwords inside)"
    swift = (tmp_path / "work" / "etc" / "swift" / "proxy-server.conf").read_text()
    assert "bind_ip = 127.0.0.1" in swift and "bind_port = 31020" in swift
    assert "127.0.0.1:31000/nova?" in (tmp_path / "work" / "etc" / "nova" / "nova.conf").read_text()
    assert "database" not in (tmp_path / "work" / "etc" / "nova" / "nova-compute.conf").read_text().split(
        "[keystone_authtoken]"
    )[0].replace("[DEFAULT]", "")


def test_preflight_plans_what_the_stack_adds():
    cfg = parse({**BASE, "topology": "split", "replicas": 2, "engineNode": {**BASE.get("engineNode", {}),
                 "bootVolumeSize": 40}})  # fmt: skip
    need = plan(cfg, "llm-t")
    assert need.servers == {
        "llm-t-llm1": cfg.engine_node.flavor,
        "llm-t-llm2": cfg.engine_node.flavor,
        "llm-t-edge1": cfg.edge_node.flavor,
    }
    assert need.volume_gb == {
        "llm-t-llm1-data": cfg.engine_node.data_volume_size,
        "llm-t-llm2-data": cfg.engine_node.data_volume_size,
    }
    assert need.boot_gb == {"llm-t-llm1": 40, "llm-t-llm2": 40}  # the edge boots from its flavor's disk


def _hold_lock(work: Path, seconds: float) -> threading.Thread:
    """Another `up` on the same work dir: its own open file, so flock conflicts as between processes."""
    work.mkdir(parents=True, exist_ok=True)
    held = threading.Event()

    def hold() -> None:
        with open(work / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            held.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    return thread


def test_a_second_up_waits_for_the_first_and_says_so(tmp_path, capfd):
    cloud = Cloud(tmp_path / "cloud")
    holder = _hold_lock(cloud.work, 0.8)
    start = time.monotonic()
    with cloud._exclusive():
        waited = time.monotonic() - start
    holder.join()
    assert waited >= 0.5
    said = capfd.readouterr()
    assert "is working on" in said.out + said.err


def test_a_second_up_gives_up_after_its_bound_and_names_the_work_dir(tmp_path):
    cloud = Cloud(tmp_path / "cloud")
    cloud.lock_wait_s = 0.3
    holder = _hold_lock(cloud.work, 1.5)
    with pytest.raises(CloudError, match=str(cloud.work)), cloud._exclusive():
        pass
    holder.join()
