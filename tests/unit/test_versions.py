"""`llmcloud versions`: every pin listed, each where it says, and the versions that must agree do."""

from __future__ import annotations

import re

import yaml

from llmcloud import REPO_ROOT, versions
from llmcloud.contract import role_default
from llmcloud.local import engine_ollama, peers


def test_each_version_is_in_the_file_that_is_said_to_pin_it():
    found = versions.pins()
    assert len(found) > 40
    for pin in found:
        text = (REPO_ROOT / pin.where).read_text()
        for part in pin.version.split("<...>"):
            assert part in text, f"{pin.component} {pin.version} is not in {pin.where}"
        assert pin.version != "?", f"{pin.component}: no version found in {pin.where}"


def test_every_image_the_roles_deploy_is_listed():
    listed = {p.component for p in versions.pins() if p.kind == "image"}
    refs = set()
    for defaults in REPO_ROOT.glob("roles/*/defaults/main.yml"):
        for value in re.findall(
            r"[\"' ]([a-z0-9.-]+\.[a-z]{2,}/[\w./-]+|[a-z0-9-]+/[\w.-]+):[\w.{]", defaults.read_text()
        ):
            refs.add(value)
    assert refs and refs <= listed, refs - listed


def test_the_local_builds_are_the_versions_the_roles_deploy():
    go_mod = (REPO_ROOT / "llmcloud/local/peers/oauth2-proxy/go.mod").read_text()
    assert f"github.com/oauth2-proxy/oauth2-proxy/v7 {peers.OAUTH2_PROXY_VERSION}" in go_mod
    webui = (REPO_ROOT / "llmcloud/local/peers/open-webui/requirements.txt").read_text()
    assert f"open-webui=={peers.OPEN_WEBUI_VERSION.removeprefix('v')}\n" in webui
    assert role_default("oauth2_proxy", "oauth2_proxy_image").endswith(":" + peers.OAUTH2_PROXY_VERSION)
    ollama = yaml.safe_load((REPO_ROOT / "roles/llm_engine/defaults/main.yml").read_text())[
        "llm_engine_images"
    ]
    assert ollama["ollama"].endswith(":" + engine_ollama.OLLAMA_VERSION.removeprefix("v"))


def test_the_command_prints_the_table_and_json(capsys):
    from llmcloud import cli

    assert cli.main(["versions"]) == 0
    table = capsys.readouterr().out
    assert "ghcr.io/huggingface/text-generation-inference" in table and "pinned in" in table
    assert cli.main(["versions", "--json"]) == 0
    assert '"kind": "image"' in capsys.readouterr().out
