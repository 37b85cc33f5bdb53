"""The real local engine's pieces that need no build: the tiny model file and the stack's engine settings."""

from __future__ import annotations

import json

import gguf
import pytest

from llmcloud.local import engine_ollama, settings
from llmcloud.local.stack import DOUBLE_MODEL, Images, LocalStack

NETWORK = settings.LocalNetwork("172.30.0.1", "172.30.0.0/16", "http://172.30.0.1:9400")
DEPLOY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHfM4yWq5c4D3R1lDXRQ8+0Ww7nXbPqk1mAcI2fX2V1C deploy@test"


def role_vars(plan: LocalStack) -> dict:
    cfg = settings.stack_config(plan, plan._built, NETWORK, DEPLOY_KEY, plan._secrets())
    return settings.group_vars(plan, plan._built, NETWORK, cfg)


@pytest.fixture
def module(tmp_path):
    """A stand-in for Ollama's module folder: a four-token byte-pair vocabulary and Llama 3's template."""
    tokenizer = tmp_path / "tokenizer" / "testdata" / "llama3.2"
    tokenizer.mkdir(parents=True)
    (tokenizer / "encoder.json").write_text(json.dumps({"h": 0, "i": 1, "hi": 2, "Ġ": 3}))
    (tokenizer / "vocab.bpe").write_text("#version: 0.2\nh i\n")
    (tmp_path / "template").mkdir()
    templates = [
        {"name": "chatml", "template": "x"},
        {"name": "llama3-instruct", "template": "{{ messages }}"},
    ]
    (tmp_path / "template" / "index.json").write_text(json.dumps(templates))
    return tmp_path


def test_the_tiny_model_has_what_ollamas_llama_loader_reads(module, tmp_path):
    out = tmp_path / "tiny.gguf"
    engine_ollama.write_model(module, out)
    reader = gguf.GGUFReader(out)
    fields = {name: field for name, field in reader.fields.items()}

    def value(name):
        return fields[name].contents()

    assert value("general.architecture") == "llama"
    for key in (
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "context_length",
    ):
        assert f"llama.{key}" in fields, key
    tokens = value("tokenizer.ggml.tokens")
    # The byte-pair vocabulary, then Llama 3's 256 special tokens; bos and eos are two of them.
    assert tokens[:4] == ["h", "i", "hi", "Ġ"] and len(tokens) == 4 + 256
    assert tokens[value("tokenizer.ggml.bos_token_id")] == "<|begin_of_text|>"
    assert tokens[value("tokenizer.ggml.eos_token_id")] == "<|eot_id|>"
    assert value("tokenizer.ggml.token_type")[4:] == [3] * 256
    assert value("tokenizer.ggml.merges") == ["h i"]
    assert value("tokenizer.chat_template") == "{{ messages }}"
    shapes = {t.name: list(t.shape) for t in reader.tensors}
    embd = engine_ollama.MODEL_SHAPE["embedding"]
    assert shapes["token_embd.weight"] == [embd, len(tokens)]
    assert len([n for n in shapes if n.endswith(".attn_q.weight")]) == engine_ollama.MODEL_SHAPE["layers"]


def test_the_tiny_model_is_the_same_file_every_time(module, tmp_path):
    engine_ollama.write_model(module, tmp_path / "a.gguf")
    engine_ollama.write_model(module, tmp_path / "b.gguf")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_ollama_stack_imports_the_model_from_a_file_and_names_it(tmp_path):
    plan = LocalStack(inventory_root=tmp_path, engine="ollama")
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    plan._built = Images(
        base="b",
        idp="i",
        double=("d", tmp_path / "d.tar"),
        oauth2_proxy=("o", tmp_path / "o.tar"),
        ollama=("llmcloud/ollama:v0-x", tmp_path / "ollama.tar"),
        tiny_model=(tmp_path / "tiny.gguf", "ab" * 32),
        open_webui=("w", tmp_path / "w.tar"),
    )
    engine = role_vars(plan)
    assert engine["llm_engine_kind"] == "ollama"
    assert engine["llm_engine_model_source"] == "controller"
    assert engine["llm_engine_model_path"] == str(tmp_path / "tiny.gguf")
    assert engine["llm_engine_model_sha256"] == "ab" * 32
    assert "llm_engine_healthcheck_test" not in engine  # the role's own check for Ollama (`ollama list`)
    assert plan.main_model == engine_ollama.MODEL_NAME


def test_the_default_engine_is_the_test_double(tmp_path):
    plan = LocalStack(inventory_root=tmp_path)
    plan._built = Images(
        "b",
        "i",
        ("llmcloud/engine-double:x", tmp_path / "double.tar"),
        ("o", tmp_path / "o.tar"),
        open_webui=("w", tmp_path / "w.tar"),
    )
    assert role_vars(plan)["llm_engine_model_id"] == DOUBLE_MODEL
    assert plan.main_model == DOUBLE_MODEL
