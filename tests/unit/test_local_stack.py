"""Local stack planning and its refusals, without starting Docker."""

from __future__ import annotations

import io
import socket
import tarfile

import pytest

from llmcloud.errors import UserError
from llmcloud.keys import ensure_ed25519
from llmcloud.local import artifacts, hosts, image, settings, stack
from llmcloud.local.stack import LocalStack


def test_single_topology_is_one_host_in_both_groups(tmp_path):
    plan = LocalStack(inventory_root=tmp_path)
    assert plan.hosts() == [("llm1", ("llm", "edge"))]


def test_split_topology_has_an_edge_and_engine_hosts(tmp_path):
    plan = LocalStack(topology="split", engines=3, inventory_root=tmp_path)
    assert plan.hosts() == [("edge1", ("edge",)), ("llm1", ("llm",)), ("llm2", ("llm",)), ("llm3", ("llm",))]


def test_ports_are_published_on_loopback_only_and_web_only_on_edge(tmp_path):
    plan = LocalStack(topology="split", engines=2, ssh_port=3000, inventory_root=tmp_path)
    published = [plan.ports(i, groups) for i, (_, groups) in enumerate(plan.hosts())]
    assert {addr for ports in published for addr, _ in ports.values()} == {"127.0.0.1"}
    assert [p["22/tcp"][1] for p in published] == [3000, 3001, 3002]
    assert "443/tcp" in published[0]
    assert all("443/tcp" not in p and "80/tcp" not in p for p in published[1:])


def test_capabilities_leave_out_sys_resource():
    assert "SYS_RESOURCE" not in stack.CAPABILITIES
    assert {"NET_ADMIN", "SYS_ADMIN"} <= set(stack.CAPABILITIES)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"topology": "triple"}, "--topology"),
        ({"topology": "split", "engines": 0}, "--engines"),
        ({"topology": "split", "engines": 9}, "--engines"),
        ({"engines": 2}, "--engines"),
        ({"name": "My Stack"}, "--stack"),
        ({"ssh_port": 22}, "--ssh-port"),
        ({"https_port": 70000}, "--https-port"),
        ({"engine": "tgi"}, "--engine"),
    ],
)
def test_bad_settings_name_the_flag(tmp_path, kwargs, flag):
    with pytest.raises(UserError) as err:
        LocalStack(inventory_root=tmp_path, **kwargs)
    assert flag in str(err.value)
    assert err.value.fix


def test_taken_port_is_reported_with_the_fix():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(UserError) as err:
            hosts.require_free_port(port, "llm1 22/tcp")
    assert f"127.0.0.1:{port}" in err.value.cause
    assert "--ssh-port" in err.value.fix


def test_state_file_restores_settings(tmp_path):
    plan = LocalStack(name="demo", topology="split", engines=2, ssh_port=3100, inventory_root=tmp_path)
    plan.inventory_dir.mkdir(parents=True)
    import json

    (plan.inventory_dir / stack.STATE_FILE).write_text(json.dumps(plan._state()))
    again = stack.load("demo", tmp_path)
    assert (again.topology, again.engines, again.ssh_port) == ("split", 2, 3100)


def test_first_boot_files_give_each_host_its_key_and_deploy_access(tmp_path):
    pub = ensure_ed25519(tmp_path / "deploy", "deploy@test")
    ensure_ed25519(tmp_path / "hostkey", "root@llm1")
    with tarfile.open(fileobj=io.BytesIO(hosts.first_boot_files(pub, tmp_path / "hostkey"))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["etc/ssh/ssh_host_ed25519_key"].mode == 0o600
        assert members["home/deploy/.ssh"].uid == image.DEPLOY_UID
        auth = tar.extractfile("home/deploy/.ssh/authorized_keys").read().decode()
    assert auth.strip() == pub
    assert members["home/deploy/.ssh/authorized_keys"].mode == 0o600


def test_keys_are_private_and_stable(tmp_path):
    first = ensure_ed25519(tmp_path / "ssh" / "k", "c")
    assert (tmp_path / "ssh" / "k").stat().st_mode & 0o077 == 0
    assert (tmp_path / "ssh").stat().st_mode & 0o077 == 0
    assert ensure_ed25519(tmp_path / "ssh" / "k", "c") == first
    assert first.startswith("ssh-ed25519 ")


def test_image_tag_follows_the_recipe(monkeypatch):
    before = image.recipe_hash()
    assert image.recipe_hash() == before
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "vim"))
    assert image.recipe_hash() != before


class _Volumes:
    """Docker's volume listing as the Docker SDK answers it (a substring match on the name)."""

    def __init__(self, names):
        self.names = names

    def list(self, filters):
        return [type("Volume", (), {"name": n}) for n in self.names if filters["name"] in n]


def test_backups_of_a_lost_inventory_are_never_adopted(tmp_path):
    plan = LocalStack(name="demo", inventory_root=tmp_path)
    client = type("Client", (), {"volumes": _Volumes(["llmcloud-demo-backup"])})
    with pytest.raises(UserError) as err:
        plan._refuse_orphaned_backups(client)
    assert "llmcloud-demo-backup" in err.value.cause
    assert "llmcloud local down --stack demo" in err.value.fix


def test_backups_open_with_the_inventorys_password_or_there_are_none(tmp_path):
    plan = LocalStack(name="demo", inventory_root=tmp_path)
    # A look-alike name is someone else's volume, not this stack's backups.
    plan._refuse_orphaned_backups(type("Client", (), {"volumes": _Volumes(["llmcloud-demo-backup-old"])}))
    secrets_file = plan.inventory_dir / "group_vars" / "all" / "01-secrets.yml"
    secrets_file.parent.mkdir(parents=True)
    secrets_file.write_text("restic_password: kept\n")
    plan._refuse_orphaned_backups(type("Client", (), {"volumes": _Volumes(["llmcloud-demo-backup"])}))


def test_cached_image_tarballs_are_loaded_in_place_on_the_hosts(tmp_path):
    cached = artifacts.IMAGE_CACHE / "engine-double-0123456789ab.tar"
    assert settings.preload("llmcloud/engine-double:0123456789ab", cached) == {
        "path": str(cached),
        "name": "llmcloud/engine-double:0123456789ab",
        "host_path": f"{artifacts.IMAGES_MOUNT}/engine-double-0123456789ab.tar",
    }
    # A tarball elsewhere is not in the hosts' mount: role docker copies it.
    elsewhere = tmp_path / "x.tar"
    assert settings.preload("x:1", elsewhere) == {"path": str(elsewhere), "name": "x:1"}


def summary_of(**status) -> str:
    import contextlib

    from llmcloud import REPO_ROOT, cli

    base = {
        "stack": "demo",
        "topology": "single",
        "hosts": [{"host": "llm1", "state": "running", "ports": {"22/tcp": "127.0.0.1:2222"}}],
        "inventory": str(REPO_ROOT / "inventory" / "demo"),
        "ssh_config": str(REPO_ROOT / "inventory" / "demo" / "ssh_config"),
        "url": "https://localhost:8443/",
        "ca_bundle": str(REPO_ROOT / "inventory" / "demo" / "tls" / "ca.pem"),
        "api_key": "llmc_x",
        "models": ["llmcloud/engine-test-double"],
        "login": {"user": "alice"},
        "chat_ui": True,
        "engine": {"host": "llm1", "note": "the engine TEST DOUBLE"},
    }
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli._print_summary({**base, **status})
    return out.getvalue()


def test_summary_commands_need_only_the_repository_and_the_prerequisites():
    """Each command runs as printed in a new shell: the venv's tools by path, no jq, no pipes."""
    from llmcloud import REPO_ROOT

    text = summary_of()
    assert "inventory: inventory/demo " in text
    assert "ssh -F inventory/demo/ssh_config llm1" in text
    assert "key=$(.venv/bin/llmcloud local status --stack demo --api-key)" in text
    assert "--cacert inventory/demo/tls/ca.pem" in text
    assert "jq" not in text and "|" not in text
    makefile = (REPO_ROOT / "Makefile").read_text()
    for tool in {"llmcloud", "ansible-playbook"}:
        assert f".venv/bin/{tool} " in text
    for target in ("backup", "backup-drill", "restore", "monitor"):
        assert f"make {target}" in text and f"\n{target}: " in makefile


def test_summary_names_an_inventory_root_other_than_the_default(tmp_path):
    text = summary_of(inventory=str(tmp_path / "demo"), ssh_config=str(tmp_path / "demo" / "ssh_config"))
    assert f"local status --stack demo --inventory-root {tmp_path} --api-key" in text


def test_a_cached_file_is_written_whole_by_each_of_two_writers_at_once(tmp_path):
    """Two stacks started side by side save the same image tarball: each writes its own partial file, the
    last one whole wins, a failed writer leaves nothing behind (seen: one stack's rename took the other's)."""
    from llmcloud.local.peers import written_whole

    target = tmp_path / "images" / "oauth2-proxy.tar"
    with written_whole(target) as first, written_whole(target) as second:
        assert first != second and first.parent == second.parent == target.parent
        first.write_bytes(b"one")
        second.write_bytes(b"two")
    assert target.read_bytes() == b"one" and target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError), written_whole(target) as broken:
        broken.write_bytes(b"half")
        raise RuntimeError("the save broke off")
    assert target.read_bytes() == b"one"
    assert sorted(p.name for p in target.parent.iterdir()) == ["oauth2-proxy.tar"]
