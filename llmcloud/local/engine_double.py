"""The engine TEST DOUBLE image (tests/fixtures/engine-double): built, saved as a tarball for preloading.

Local and test inventories only. No engine image can be pulled here and there is no GPU, so the local stack
serves this stand-in; OpenStack stacks never do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from llmcloud import REPO_ROOT
from llmcloud.errors import UserError
from llmcloud.local import system

SOURCE = REPO_ROOT / "tests" / "fixtures" / "engine-double"
REPOSITORY = "llmcloud/engine-double"


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in ("main.go", "go.mod", "Dockerfile"):
        digest.update(name.encode() + b"\0" + (SOURCE / name).read_bytes())
    return digest.hexdigest()[:12]


def ensure(client, progress, cache_dir: Path) -> tuple[str, Path]:
    """Return (image reference, tarball path), building and saving the image when its source changed."""
    tag = source_hash()
    ref = f"{REPOSITORY}:{tag}"
    tarball = cache_dir / f"engine-double-{tag}.tar"
    if tarball.is_file():
        progress.log(f"engine test double {ref} is cached")
        return ref, tarball
    system.ensure_packages({"go": "golang-go"})
    go = shutil.which("go") or "/usr/local/go/bin/go"
    with tempfile.TemporaryDirectory(prefix="llmcloud-double-") as context:
        with progress.step(f"build the engine test double ({ref})"):
            env = {
                **os.environ,
                "CGO_ENABLED": "0",
                "GOFLAGS": "-mod=mod",
                "GOCACHE": str(cache_dir / "go-build"),
            }
            built = subprocess.run(
                [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(Path(context) / "engine-double"), "."],
                cwd=SOURCE,
                env=env,
                capture_output=True,
                text=True,
            )
            if built.returncode != 0:
                raise UserError(
                    f"go build of the engine test double failed: {built.stderr.strip()[-300:]}",
                    "install Go 1.19 or newer (Debian: golang-go)",
                )
            shutil.copy(SOURCE / "Dockerfile", context)
            client.images.build(path=context, tag=ref, rm=True)
        with progress.step(f"save {ref} for preloading"):
            cache_dir.mkdir(parents=True, exist_ok=True)
            partial = tarball.with_suffix(".partial")
            with open(partial, "wb") as fh:
                for chunk in client.images.get(ref).save(named=True):
                    fh.write(chunk)
            partial.rename(tarball)
    return ref, tarball
