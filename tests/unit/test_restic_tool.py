"""llmcloud-restic (role restic's host tool): the parts that decide without restic."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import shutil

import pytest

from llmcloud import REPO_ROOT

_loader = importlib.machinery.SourceFileLoader(
    "llmcloud_restic", str(REPO_ROOT / "roles/restic/files/llmcloud-restic")
)
_spec = importlib.util.spec_from_loader("llmcloud_restic", _loader)
tool = importlib.util.module_from_spec(_spec)
_loader.exec_module(tool)


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        ("sftp:restic@10.0.0.2:/srv/repo", "ssh -F CFG restic@10.0.0.2 -s sftp"),
        ("sftp://backup@host.example:2222//srv/repo", "ssh -F CFG -p 2222 backup@host.example -s sftp"),
        ("sftp:host.example:/srv/repo", "ssh -F CFG host.example -s sftp"),
        ("s3:https://s3.example/bucket/node1", None),
        ("/srv/backup/node1", None),
    ],
)
def test_sftp_uses_the_roles_ssh_settings(repository, expected):
    options = tool.sftp_options({"repository": repository, "ssh_config": "CFG"})
    assert options == ([] if expected is None else ["-o", "sftp.command=" + expected])


def test_credentials_in_urls_are_redacted():
    assert (
        tool.redact("rest:https://user:s3cret@backup.example/repo")
        == "rest:https://user:***@backup.example/repo"
    )
    assert tool.redact("s3:https://s3.example/bucket") == "s3:https://s3.example/bucket"


def test_drill_comparison_finds_changed_missing_and_mode_differences(tmp_path):
    live = tmp_path / "live"
    (live / "sub").mkdir(parents=True)
    for name, data in {"a": b"alpha", "b": b"beta", "sub/c": b"gamma"}.items():
        (live / name).write_bytes(data)
    restored = tmp_path / "restored"
    shutil.copytree(live, restored / str(live).lstrip("/"), symlinks=True)
    files, size, differences = tool.compare(restored, [str(live)])
    assert (files, size, differences) == (3, 14, [])

    (live / "a").write_bytes(b"ALPHA")
    (live / "b").chmod(0o600)
    (live / "sub" / "c").unlink()
    _, _, differences = tool.compare(restored, [str(live)])
    assert sorted(differences) == sorted(
        [
            f"{live}/a: content differs (sha256)",
            f"{live}/b: mode or owner differs",
            f"{live}/sub/c: in the backup, missing on the host",
        ]
    )


def test_status_and_metrics_written_for_monitoring(tmp_path):
    config = {
        "status_dir": str(tmp_path),
        "host": "node1",
        "repository": "/srv/backup/node1",
        "metrics_dir": "",
    }
    tool.update_status(config, last_success_timestamp=1700000000, snapshot_id="abcd1234", bytes_added=42)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["snapshot_id"] == "abcd1234" and status["host"] == "node1"
    metrics = (tmp_path / "llmcloud_backup.prom").read_text()
    assert 'llmcloud_backup_last_success_timestamp_seconds{host="node1"} 1700000000' in metrics
    assert 'llmcloud_backup_last_bytes_added{host="node1"} 42' in metrics
    assert 'snapshot="abcd1234"' in metrics
    assert (tmp_path / "status.json").stat().st_mode & 0o777 == 0o644


def test_a_backup_that_hangs_is_stopped_and_reported(tmp_path):
    """restic can hang (seen here on a full repository disk): the run ends at the timeout, as a failure."""
    hanging = tmp_path / "restic"
    hanging.write_text(
        "#!/bin/sh\n"
        'echo "$1" >> "$(dirname "$0")/calls"\n'
        '[ "$1" = backup ] || exit 0\n'
        "echo 'Save(<data/1>) returned error: disk trouble' >&2\n"
        "exec sleep 30\n"
    )
    hanging.chmod(0o755)
    (tmp_path / "data").mkdir()
    config = {
        "repository": str(tmp_path / "repo"),
        "restic": str(hanging),
        "cache_dir": str(tmp_path),
        "hooks_dir": str(tmp_path / "none"),
        "paths": [str(tmp_path / "data")],
        "excludes": [],
        "host": "node1",
        "tag": "llmcloud",
        "backup_timeout_seconds": 1,
    }
    args = type("Args", (), {"tag": "llmcloud"})
    with pytest.raises(tool.Failure) as err:
        tool.cmd_backup(config, {}, args)
    message = str(err.value)
    assert "did not finish within 1 s (restic_backup_timeout_minutes)" in message
    assert "disk trouble" in message  # what restic said before it hung
    assert "no space left" not in message  # this file system has room: no false diagnosis
    assert (tmp_path / "calls").read_text().split() == ["backup", "unlock"]  # the stale lock is removed


def test_settings_in_use_and_proven_by_a_backup_are_not_tried_again(tmp_path, monkeypatch):
    staged, in_use = tmp_path / "staged", tmp_path / "in-use"
    for directory in (staged, in_use):
        directory.mkdir()
        (directory / "config.json").write_text('{"repository": "/srv/backup/node1"}')
        (directory / "secrets.json").write_text('{"RESTIC_PASSWORD": "p"}')
    monkeypatch.setattr(tool, "CONFIG", staged / "config.json")
    monkeypatch.setattr(tool, "SECRETS", staged / "secrets.json")
    config = {
        "status_dir": str(tmp_path),
        "host": "node1",
        "repository": "/srv/backup/node1",
        "metrics_dir": "",
    }
    assert not tool.proven(config, in_use)  # no backup yet
    tool.update_status(config, last_success_timestamp=1700000000)
    assert tool.proven(config, in_use)
    tool.update_status(config, last_failure_timestamp=1700000100)
    assert not tool.proven(config, in_use)  # the last backup failed: open it again
    tool.update_status(config, last_success_timestamp=1700000200)
    (staged / "secrets.json").write_text('{"RESTIC_PASSWORD": "new"}')
    assert not tool.proven(config, in_use)  # new settings are always tried
