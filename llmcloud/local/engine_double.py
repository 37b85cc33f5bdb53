"""The engine TEST DOUBLE image (tests/fixtures/engine-double): built, saved as a tarball for preloading.

Local and test inventories only. No engine image can be pulled here and there is no GPU, so the local stack
serves this stand-in; OpenStack stacks never do.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from llmcloud import REPO_ROOT
from llmcloud.local import peers

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
    with tempfile.TemporaryDirectory(prefix="llmcloud-double-") as context:
        with progress.step(f"build the engine test double ({ref})"):
            peers.go_binary(SOURCE, ".", Path(context) / "engine-double", cache_dir)
            shutil.copy(SOURCE / "Dockerfile", context)
            client.images.build(path=context, tag=ref, rm=True)
        with progress.step(f"save {ref} for preloading"):
            peers.save(client, ref, tarball)
    return ref, tarball
