"""The local cloud's hypervisor, without Docker or a cloud (with them: tests/provision)."""

from __future__ import annotations

import base64
import io
import tarfile

import pytest

from testbed import external, hypervisor


def test_volume_device_is_what_a_kvm_guest_sees():
    assert (
        hypervisor.virtio_name("0123456789abcdef0123456789") == "/dev/disk/by-id/virtio-0123456789abcdef0123"
    )


def test_seed_carries_nova_user_data_and_identity():
    server = {
        "id": "c196a486-6441",
        "OS-EXT-SRV-ATTR:user_data": base64.b64encode(b"#cloud-config\n{}\n").decode(),
    }
    with tarfile.open(fileobj=io.BytesIO(hypervisor._seed(server, "llm-boot-llm1"))) as tar:
        files = {m.name: (tar.extractfile(m).read().decode(), m.mode) for m in tar.getmembers()}
    assert files["user-data"] == ("#cloud-config\n{}\n", 0o600)
    assert files["meta-data"][0] == "instance-id: c196a486-6441\nlocal-hostname: llm-boot-llm1\n"


def test_seed_of_a_server_without_user_data_is_empty():
    with tarfile.open(fileobj=io.BytesIO(hypervisor._seed({"id": "x"}, "h"))) as tar:
        assert tar.extractfile("user-data").read() == b""


def test_volume_file_is_sparse_and_private(tmp_path):
    path = hypervisor.ensure_volume_file(tmp_path / "volumes" / "v.img", 200)
    assert path.stat().st_size == 200 * 1024**3
    assert path.stat().st_blocks == 0  # nothing written: nothing used
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_bytes(b"data")
    hypervisor.ensure_volume_file(path, 200)  # an existing volume keeps its data
    assert path.read_bytes() == b"data"


def test_a_subnet_that_would_hide_the_package_mirror_is_refused(monkeypatch):
    monkeypatch.setattr(external, "machine_addresses", lambda: {"203.0.113.80": "deb.debian.org"})
    with pytest.raises(RuntimeError, match=r"contains 203\.0\.113\.80, deb\.debian\.org of this machine"):
        external.refuse_hiding("203.0.113.0/24", "subnet public-subnet")
    external.refuse_hiding("198.51.100.0/24", "subnet public-subnet")


def test_cloud_tag_is_per_work_dir(tmp_path):
    assert hypervisor.cloud_tag(tmp_path / "a") != hypervisor.cloud_tag(tmp_path / "b")
    assert hypervisor.cloud_tag(tmp_path / "a") == hypervisor.cloud_tag(tmp_path / "x" / ".." / "a")
