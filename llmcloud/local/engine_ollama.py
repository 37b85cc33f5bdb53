"""A REAL engine for local stacks: Ollama built from its pinned Go module (CPU only), and a tiny model for it.

`llmcloud local up --engine ollama` (`make local ENGINE=ollama`). No image can be pulled and no hub reached
here, so both are made on this machine, once, and cached by a hash of what they are made from:

- the image: Ollama's Go module (its checksum pinned below) built with cgo, which compiles its llama.cpp/ggml
  CPU backend; the module's zip has no ``vendor`` folders (Go leaves them out), so the three single-file
  headers llama.cpp keeps there come from Debian (nlohmann-json3-dev, libstb-dev) and from pyminiaudio's
  source package on PyPI (miniaudio, checksum pinned). The binary and the shared libraries it links are put
  in an otherwise empty image, delivered to the hosts through the preload path like every local image.
- the model: a Llama-architecture model with 2 layers and random weights, written as GGUF with the ``gguf``
  package and Llama 3.2's real byte-pair tokenizer (the copy in Ollama's module, ``tokenizer/testdata``). Its
  text is NONSENSE; its tokenizer, loading, batching, streaming, timings and API are Ollama's own. The role
  imports it like any model without a hub (``llm_engine_model_source: controller``).

OpenStack stacks run the upstream image (``llm_engine_images.ollama``) with a real model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from llmcloud.contract import role_default
from llmcloud.errors import UserError
from llmcloud.local import peers, system

HERE = Path(__file__).parent / "ollama"
REPOSITORY = "llmcloud/ollama"
#: The upstream release the image is built from (the role's pin of the Ollama image: one home), and its module
#: checksum (go.sum's h1: line), which must change with it.
OLLAMA_VERSION = "v" + role_default("llm_engine", "llm_engine_images")["ollama"].rsplit(":", 1)[1]
OLLAMA_MODULE = "github.com/ollama/ollama"
OLLAMA_MODULE_SUM = "h1:CBZ0ffE+cxMWRWau5yD5vXHkiZHAeuxLk+3j55u0XxQ="
#: miniaudio 0.11.25 (llama.cpp's multimodal helper needs its 0.11 API): pyminiaudio 1.71's sdist on PyPI.
MINIAUDIO_SDIST = (
    "https://files.pythonhosted.org/packages/d8/d5/e5439dc08561f73656bfeb3340fc64ab63163e101426593d8fb9a025ff1e/"
    "miniaudio-1.71.tar.gz",
    "ff51e2887bb673e2e757752b586b3dc924d59aa5fbcae9bbc45f4a111bd3262b",
    "miniaudio-1.71/miniaudio/miniaudio.h",
)
#: The name the tiny model is served under. Ollama adds the tag ":latest" in its model lists.
#: What the build needs on this machine ({command or file: Debian package}): compilers for llama.cpp's CPU
#: backend and the headers Ollama's module zip leaves out.
BUILD_PACKAGES = {
    "gcc": "gcc",
    "g++": "g++",
    "/usr/include/nlohmann/json.hpp": "nlohmann-json3-dev",
    "/usr/include/stb/stb_image.h": "libstb-dev",
}
MODEL_NAME = "llmcloud/tiny-random"
MODEL_NOTE = "Ollama (a real engine, CPU) with a TINY RANDOM model: nonsense text, real API and timings"
#: The model's shape: small enough for 2 CPU cores, real enough to exercise every path of the engine.
MODEL_SHAPE = {"embedding": 64, "layers": 2, "heads": 4, "feed_forward": 128, "context": 2048, "seed": 0}
#: Llama 3's special tokens, in id order from 128000 (the rest of its 256 are reserved).
_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(4)),
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
]
_SPECIAL += [f"<|reserved_special_token_{i}|>" for i in range(5, 5 + 256 - len(_SPECIAL))]


def module_dir(cache_dir: Path) -> Path:
    """Ollama's module source, downloaded through the Go module proxy and checked against the pinned sum."""
    go = peers.go_command()
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOCACHE": str(cache_dir / "go-build")}
    got = subprocess.run(
        [go, "mod", "download", "-json", f"{OLLAMA_MODULE}@{OLLAMA_VERSION}"],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
    )
    info = json.loads(got.stdout or "{}")
    if got.returncode != 0 or "Dir" not in info:
        raise UserError(
            f"go could not download {OLLAMA_MODULE}@{OLLAMA_VERSION}: "
            f"{(info.get('Error') or got.stderr)[-300:]}",
            "check that the Go module proxy (GOPROXY) is reachable",
        )
    if info.get("Sum") != OLLAMA_MODULE_SUM:
        raise UserError(
            f"{OLLAMA_MODULE}@{OLLAMA_VERSION} has checksum {info.get('Sum')}, "
            f"not the pinned {OLLAMA_MODULE_SUM}",
            "remove the module from Go's cache (go clean -modcache) and retry; if it persists, do not use it",
        )
    return Path(info["Dir"])


def image_tag() -> str:
    return (
        f"{OLLAMA_VERSION}-{peers.recipe_hash(HERE, OLLAMA_VERSION, OLLAMA_MODULE_SUM, MINIAUDIO_SDIST[1])}"
    )


def ensure(client, progress, cache_dir: Path) -> tuple[str, Path]:
    """(image reference, tarball) of Ollama, built from the pinned module when not cached."""
    ref = f"{REPOSITORY}:{image_tag()}"
    tarball = cache_dir / f"ollama-{image_tag()}.tar"
    return peers.cached_image(
        client,
        progress,
        ref,
        tarball,
        "Ollama",
        lambda: _build_image(client, progress, cache_dir, ref),
        lock="ollama",
    )


def _build_image(client, progress, cache_dir: Path, ref: str) -> None:
    system.ensure_packages(BUILD_PACKAGES)
    with tempfile.TemporaryDirectory(prefix="llmcloud-ollama-") as work:
        source, context = Path(work) / "src", Path(work) / "context"
        with progress.step(f"fetch Ollama {OLLAMA_VERSION}'s module and the headers its zip leaves out"):
            shutil.copytree(module_dir(cache_dir), source)
            _writable(source)
            vendor = source / "llama" / "llama.cpp" / "vendor"
            for name in ("json.hpp", "json_fwd.hpp"):
                _copy(Path("/usr/include/nlohmann") / name, vendor / "nlohmann" / name)
            _copy(Path("/usr/include/stb/stb_image.h"), vendor / "stb" / "stb_image.h")
            _miniaudio(vendor / "miniaudio" / "miniaudio.h", cache_dir)
        with progress.step(
            f"build Ollama {OLLAMA_VERSION} with Go and its C++ CPU backend (about 10 min, once)"
        ):
            binary = context / "rootfs" / "usr" / "bin" / "ollama"
            binary.parent.mkdir(parents=True)
            peers.go_binary(
                source,
                ".",
                binary,
                cache_dir,
                f"-X github.com/ollama/ollama/version.Version={OLLAMA_VERSION.removeprefix('v')}",
                cgo=True,
                fix="install gcc, g++ and Go 1.24 or newer, and check the Go module proxy",
            )
            _libraries(binary, context / "rootfs")
            (context / "rootfs" / "root" / ".ollama").mkdir(parents=True)
            (context / "rootfs" / "tmp").mkdir()
            (context / "rootfs" / "tmp").chmod(0o1777)
            shutil.copy(HERE / "Dockerfile", context)
            client.images.build(path=str(context), tag=ref, rm=True)


def tiny_model(progress, cache_dir: Path) -> tuple[Path, str]:
    """(path, sha256) of the tiny random GGUF model, written once."""
    recipe = hashlib.sha256(Path(__file__).read_bytes() + json.dumps(MODEL_SHAPE).encode()).hexdigest()[:12]
    path = cache_dir / f"tiny-random-llama-{recipe}.gguf"
    if not path.is_file():
        with (
            progress.step("write the tiny random model (GGUF, Llama 3.2's tokenizer)"),
            peers.written_whole(path) as partial,
        ):
            write_model(module_dir(cache_dir), partial)
    else:
        progress.log(f"tiny model {path.name} is cached")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def write_model(module: Path, out: Path) -> None:
    """A Llama-architecture GGUF with random weights and Llama 3.2's tokenizer from Ollama's module."""
    import gguf
    import numpy as np

    tokenizer_dir = module / "tokenizer" / "testdata" / "llama3.2"
    encoder = json.loads((tokenizer_dir / "encoder.json").read_text(encoding="utf-8"))
    tokens = [""] * len(encoder)
    for token, index in encoder.items():
        tokens[index] = token
    types = [1] * len(tokens) + [3] * len(_SPECIAL)  # normal, then control tokens
    tokens += _SPECIAL
    merges = [
        line
        for line in (tokenizer_dir / "vocab.bpe").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    # Llama 3's chat template as Ollama knows it, so that Ollama picks its own template for chats.
    templates = json.loads((module / "template" / "index.json").read_text(encoding="utf-8"))
    chat_template = next(t["template"] for t in templates if t["name"] == "llama3-instruct")

    shape = MODEL_SHAPE
    n_embd, n_ff, n_head = shape["embedding"], shape["feed_forward"], shape["heads"]
    rng = np.random.default_rng(shape["seed"])
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("llmcloud tiny random llama (test model: nonsense text)")
    writer.add_context_length(shape["context"])
    writer.add_embedding_length(n_embd)
    writer.add_block_count(shape["layers"])
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    writer.add_eos_token_id(tokens.index("<|eot_id|>"))
    writer.add_add_bos_token(True)
    writer.add_chat_template(chat_template)

    def tensor(name: str, *dims: int, norm: bool = False) -> None:
        # Norms are ones (float32); weights small random numbers (float16). No output matrix: tied embeddings.
        if norm:
            writer.add_tensor(name, np.ones(dims, np.float32))
        else:
            writer.add_tensor(name, rng.normal(0.0, 0.02, dims).astype(np.float16))

    tensor("token_embd.weight", len(tokens), n_embd)
    for i in range(shape["layers"]):
        tensor(f"blk.{i}.attn_norm.weight", n_embd, norm=True)
        for part in ("q", "k", "v", "output"):
            tensor(f"blk.{i}.attn_{part}.weight", n_embd, n_embd)
        tensor(f"blk.{i}.ffn_norm.weight", n_embd, norm=True)
        tensor(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    tensor("output_norm.weight", n_embd, norm=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _writable(tree: Path) -> None:
    # Go's module cache is read-only.
    for path in [tree, *tree.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _miniaudio(dest: Path, cache_dir: Path) -> None:
    url, sha256, member = MINIAUDIO_SDIST
    sdist = cache_dir / Path(url).name
    if not sdist.is_file() or hashlib.sha256(sdist.read_bytes()).hexdigest() != sha256:
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                data = response.read()
        except OSError as exc:
            raise UserError(f"could not download {url}: {exc}", "check that PyPI is reachable") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise UserError(
                f"{url} does not have the pinned checksum {sha256}", "retry; if it persists, stop"
            )
        sdist.parent.mkdir(parents=True, exist_ok=True)
        sdist.write_bytes(data)
    with tarfile.open(sdist) as archive:
        extracted = archive.extractfile(member)
        if extracted is None:
            raise UserError(
                f"{sdist.name} has no {member}", "check MINIAUDIO_SDIST in llmcloud/local/engine_ollama.py"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(extracted.read())


def _libraries(binary: Path, rootfs: Path) -> None:
    """Copy the shared libraries the binary links (ldd) into the image's root, at the same paths."""
    listed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    for line in listed.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if not path.startswith("/"):
            continue  # linux-vdso
        real = Path(path).resolve()
        _copy(real, rootfs / path.lstrip("/"))
        (rootfs / path.lstrip("/")).chmod(0o755)
