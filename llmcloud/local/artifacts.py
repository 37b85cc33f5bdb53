"""Every image and file a local stack needs, built here or found in the cache, side by side."""

from __future__ import annotations

import functools
import importlib.util
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from llmcloud import REPO_ROOT
from llmcloud.errors import UserError
from llmcloud.local import engine_ollama, image, peers, system
from llmcloud.progress import Progress

#: The image cache (the tarballs below), mounted read-only in every host: role docker loads them in place
#: (host_path) instead of copying 1.5 GB over SSH (44 s of a fresh converge).
IMAGE_CACHE = image.IMAGE_CACHE
IMAGES_MOUNT = "/srv/llmcloud-images"
#: The engine TEST DOUBLE: its source and its build live together, with the tests' fixtures.
ENGINE_DOUBLE = REPO_ROOT / "tests" / "fixtures" / "engine-double"


@functools.cache
def engine_double():
    """The engine TEST DOUBLE's build module (tests/fixtures/engine-double/build.py)."""
    spec = importlib.util.spec_from_file_location("llmcloud_engine_double_build", ENGINE_DOUBLE / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Images:
    """What `build_images` built or found: references, and (reference, tarball) for the preloaded ones."""

    base: str
    idp: str
    double: tuple[str, Path]
    oauth2_proxy: tuple[str, Path]
    ollama: tuple[str, Path] | None = None
    tiny_model: tuple[Path, str] | None = None
    open_webui: tuple[str, Path] | None = None


def build_images(progress: Progress, *, ollama: bool = False, chat_ui: bool = True) -> Images:
    """Build or find every image a local stack needs, side by side.

    Most of a first build is waiting on downloads and disks, so the independent ones run at once: the base
    image (debootstrap), the Go builds, and the PyPI downloads of the identity provider and the chat UI,
    whose images then wait for the base image they are built on. A failed step is named; nothing it left
    half done is cached (images are tagged and tarballs renamed only when whole)."""
    base_ref = image.image_ref()
    base: Future[str] = Future()

    def base_image(p: Progress) -> str:
        try:
            base.set_result(image.ensure(p))
        except BaseException as exc:
            base.set_exception(exc)
            raise
        return base.result()

    def on_base() -> str:
        try:
            return base.result()
        except BaseException:
            raise UserError("the base image failed (see its step)", "fix that step first") from None

    def client():  # one Docker client per step: they run in threads
        return system.docker_client()

    steps = {
        "base": ("base image (Debian 12 + systemd, debootstrap)", base_image),
        "double": (
            "engine TEST DOUBLE image (tests/fixtures/engine-double)",
            lambda p: engine_double().ensure(client(), p, IMAGE_CACHE),
        ),
        "oauth2_proxy": (
            f"oauth2-proxy image ({peers.OAUTH2_PROXY_VERSION}, built from its Go module)",
            lambda p: peers.oauth2_proxy(client(), p, IMAGE_CACHE),
        ),
        "idp": (
            "identity provider image (oidc-provider-mock)",
            lambda p: peers.oidc_mock(client(), p, base_ref, on_base),
        ),
    }
    if ollama:
        steps["ollama"] = (
            f"Ollama image ({engine_ollama.OLLAMA_VERSION}, built from its Go module)",
            lambda p: engine_ollama.ensure(client(), p, IMAGE_CACHE),
        )
        steps["tiny_model"] = (
            "tiny random model for Ollama (GGUF)",
            lambda p: engine_ollama.tiny_model(p, REPO_ROOT / ".cache" / "models"),
        )
    if chat_ui:
        steps["open_webui"] = (
            f"chat UI image (Open WebUI {peers.OPEN_WEBUI_VERSION} from PyPI)",
            lambda p: peers.open_webui(client(), p, base_ref, IMAGE_CACHE, on_base),
        )
    built = progress.side_by_side({title: fn for title, fn in steps.values()})
    return Images(**{field: built[title] for field, (title, _) in steps.items()})
