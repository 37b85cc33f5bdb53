"""Images of the real peers a local stack talks to.

oauth2-proxy is built from its pinned Go module, the OpenID Connect provider is oidc-provider-mock from PyPI.
Both are built here, because no registry can be reached, and cached by a hash of their recipe.
OpenStack stacks use the upstream oauth2-proxy image and a real provider.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from llmcloud.contract import role_default
from llmcloud.errors import UserError
from llmcloud.local import system

HERE = Path(__file__).parent
#: The versions the local stack builds are the ones the roles deploy: read from their image pins (one home);
#: tests/unit/test_versions.py holds the module pins (go.mod, requirements.txt) to them.
OAUTH2_PROXY_VERSION = role_default("oauth2_proxy", "oauth2_proxy_image").rsplit(":", 1)[1]


def recipe_hash(directory: Path, *extra: str, files: tuple[str, ...] | None = None) -> str:
    """12 hex digits of a build's recipe: the files of ``directory`` (or just ``files``), and ``extra``."""
    digest = hashlib.sha256()
    paths = [directory / f for f in files] if files else directory.iterdir()
    for path in sorted(p for p in paths if p.is_file() and p.name != "__init__.py"):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:12]


#: Debian's Go, installed only when there is no Go at all (it is 1.19 on Debian 12: enough for the engine test
#: double; oauth2-proxy and Ollama need the newer one that go.dev installs in /usr/local/go).
GO_PACKAGES = {"go": "golang-go"}


def find_go() -> str | None:
    """The go command on PATH, else go.dev's install in /usr/local/go (not on every user's PATH)."""
    return shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")


def go_command() -> str:
    """The go command, installing Debian's golang-go when there is none."""
    if not find_go():
        system.ensure_packages(GO_PACKAGES)
    return find_go() or "go"


def go_binary(
    source: Path,
    package: str,
    output: Path,
    cache_dir: Path,
    ldflags: str = "",
    cgo: bool = False,
    fix: str = "install Go 1.26 or newer (go.dev's, in /usr/local/go) and check the Go module proxy",
) -> None:
    """Build a Go binary of ``package`` with the module (go.mod, go.sum) in ``source``, static unless cgo."""
    go = go_command()
    env = {
        **os.environ,
        "CGO_ENABLED": "1" if cgo else "0",
        "GOFLAGS": "-mod=mod",
        "GOCACHE": str(cache_dir / "go-build"),
    }
    built = subprocess.run(
        [go, "build", "-trimpath", f"-ldflags=-s -w {ldflags}".strip(), "-o", str(output), package],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        raise UserError(f"go build of {package} failed: {built.stderr.strip()[-600:]}", fix)


@contextlib.contextmanager
def build_lock(cache_dir: Path, name: str, progress, what: str) -> Iterator[None]:
    """One build of ``what`` at a time (`make test` starts some in the background): a second caller says it
    waits, waits, then finds the first one's result in the cache."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.log(f"waiting for another build of {what} to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_image(
    client,
    progress,
    ref: str,
    tarball: Path,
    what: str,
    build: Callable[[], object],
    *,
    lock: str | None = None,
    image_too: bool = False,
) -> tuple[str, Path]:
    """(ref, tarball) of an image the hosts preload: the cached tarball, else ``build()`` the image (unless
    Docker has it) and save it. ``lock``: one build at a time under that name; ``image_too``: the image must
    also be in this machine's Docker (it runs here too)."""
    cache_dir = tarball.parent
    with build_lock(cache_dir, lock, progress, what) if lock else contextlib.nullcontext():
        if tarball.is_file() and (not image_too or client.images.list(name=ref)):
            progress.log(f"{what} {ref} is cached")
            return ref, tarball
        if not client.images.list(name=ref):
            build()
        with progress.step(f"save {ref} for preloading"):
            save(client, ref, tarball)
    return ref, tarball


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A partial file beside ``path``, of this writer alone, that becomes ``path`` when the block ends without
    an error (removed otherwise): two stacks started side by side in one checkout may write the same cached
    file at once, and a reader never sees half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
        partial.chmod(0o644)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def save(client, ref: str, tarball: Path) -> Path:
    """Save an image for the hosts' preload path (role docker)."""
    with written_whole(tarball) as partial, open(partial, "wb") as fh:
        for chunk in client.images.get(ref).save(named=True):
            fh.write(chunk)
    return tarball


def oauth2_proxy(client, progress, cache_dir: Path) -> tuple[str, Path]:
    """(image reference, tarball) of oauth2-proxy, built from the pinned module."""
    source = HERE / "oauth2-proxy"
    ref = f"llmcloud/oauth2-proxy:{OAUTH2_PROXY_VERSION}-{recipe_hash(source, OAUTH2_PROXY_VERSION)}"

    def build() -> None:
        with (
            tempfile.TemporaryDirectory(prefix="llmcloud-oauth2-proxy-") as context,
            progress.step(f"build oauth2-proxy {OAUTH2_PROXY_VERSION} with Go (about 2 min, once)"),
        ):
            go_binary(
                source,
                "github.com/oauth2-proxy/oauth2-proxy/v7",
                Path(context) / "oauth2-proxy",
                cache_dir,
                f"-X github.com/oauth2-proxy/oauth2-proxy/v7/pkg/version.VERSION={OAUTH2_PROXY_VERSION}",
            )
            shutil.copy("/etc/ssl/certs/ca-certificates.crt", context)
            shutil.copy(source / "Dockerfile", context)
            client.images.build(path=context, tag=ref, rm=True)

    tarball = cache_dir / f"oauth2-proxy-{ref.rsplit(':', 1)[1]}.tar"
    return cached_image(client, progress, ref, tarball, "oauth2-proxy", build)


def oidc_mock(client, progress, base_ref: str, on_base: Callable[[], object] = lambda: None) -> str:
    """Image reference of the local identity provider, built on the hosts' base image.

    ``on_base`` returns once the base image exists (it may be built meanwhile, beside this download)."""
    source = HERE / "oidc-mock"
    ref = f"llmcloud/oidc-mock:{recipe_hash(source, base_ref)}"
    if client.images.list(name=ref):
        progress.log(f"identity provider {ref} is cached")
        return ref
    with (
        tempfile.TemporaryDirectory(prefix="llmcloud-oidc-mock-") as context,
        progress.step(f"build the identity provider image {ref} (oidc-provider-mock)"),
    ):
        _build_from_pypi(client, source, Path(context), ref, base_ref, on_base, "oidc-provider-mock", "3.11")
    return ref


def _build_from_pypi(
    client,
    source: Path,
    context: Path,
    ref: str,
    base_ref: str,
    on_base: Callable[[], object],
    what: str,
    python_version: str,
    platforms: tuple[str, ...] = ("manylinux2014_x86_64",),
) -> None:
    """Build ``source``'s Dockerfile on the hosts' base image, its pinned wheels installed here into site/.

    The download needs no base image: ``on_base`` is waited for only before the build."""
    installed = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:"),
            *("--python-version", python_version, *(arg for tag in platforms for arg in ("--platform", tag))),
            *("--target", str(context / "site"), "-r", str(source / "requirements.txt")),
        ],
        capture_output=True,
        text=True,
    )
    if installed.returncode != 0:
        raise UserError(
            f"pip could not fetch {what}: {installed.stderr.strip()[-400:]}",
            f"check that PyPI is reachable (llmcloud/local/peers/{source.name}/requirements.txt)",
        )
    shutil.copy(source / "Dockerfile", context)
    on_base()
    # Docker reads the whole context before it answers (1.5 GB for the chat UI): the bound grows with it.
    size = sum(f.stat().st_size for f in context.rglob("*") if f.is_file())
    timeout = max(300, round(size / 2**30 * 600))
    client.images.build(path=str(context), tag=ref, rm=True, buildargs={"BASE": base_ref}, timeout=timeout)


OPEN_WEBUI_VERSION = role_default("open_webui", "open_webui_image").rsplit(":", 1)[1]
#: Wheels the closure in open-webui/requirements.txt was resolved for (Debian 12: glibc 2.36, Python 3.11.2).
_MANYLINUX = (
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_34_x86_64",
)


def open_webui(
    client, progress, base_ref: str, cache_dir: Path, on_base: Callable[[], object] = lambda: None
) -> tuple[str, Path]:
    """(image reference, tarball) of Open WebUI from PyPI (LOCAL stacks and tests), cached by its pins.

    Built once (about 1.5 GB, a few minutes); production uses the upstream image at the same version.
    """
    source = HERE / "open-webui"
    ref = f"llmcloud/open-webui:{OPEN_WEBUI_VERSION}-{recipe_hash(source, base_ref)}"

    def build() -> None:
        with (
            tempfile.TemporaryDirectory(prefix="llmcloud-open-webui-", dir=cache_dir) as context,
            progress.step(f"build the chat UI image {ref} (Open WebUI from PyPI, 1.5 GB, once)"),
        ):
            what = "Open WebUI's packages"
            _build_from_pypi(
                client, source, Path(context), ref, base_ref, on_base, what, "3.11.2", _MANYLINUX
            )

    tarball = cache_dir / f"open-webui-{ref.rsplit(':', 1)[1]}.tar"
    return cached_image(
        client, progress, ref, tarball, "Open WebUI", build, lock="open-webui", image_too=True
    )
