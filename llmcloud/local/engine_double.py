"""The engine TEST DOUBLE image (tests/fixtures/engine-double): built, saved as a tarball for preloading.

Local and test inventories only. No engine image can be pulled here and there is no GPU, so the local stack
serves this stand-in; OpenStack stacks never do.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from llmcloud import REPO_ROOT
from llmcloud.local import peers

SOURCE = REPO_ROOT / "tests" / "fixtures" / "engine-double"
REPOSITORY = "llmcloud/engine-double"


def ensure(client, progress, cache_dir: Path) -> tuple[str, Path]:
    """Return (image reference, tarball path), building and saving the image when its source changed."""
    tag = peers.recipe_hash(SOURCE, files=("main.go", "go.mod", "Dockerfile"))
    ref = f"{REPOSITORY}:{tag}"

    def build() -> None:
        with (
            tempfile.TemporaryDirectory(prefix="llmcloud-double-") as context,
            progress.step(f"build the engine test double ({ref})"),
        ):
            peers.go_binary(SOURCE, ".", Path(context) / "engine-double", cache_dir)
            shutil.copy(SOURCE / "Dockerfile", context)
            client.images.build(path=context, tag=ref, rm=True)

    return peers.cached_image(
        client, progress, ref, cache_dir / f"engine-double-{tag}.tar", "engine test double", build
    )
