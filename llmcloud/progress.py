"""Named steps with elapsed time, so long work is never silent."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    def __init__(self, title: str, out: TextIO | None = None):
        self.title = title
        self.out = out if out is not None else sys.stderr  # looked up now: tests and callers may redirect it
        self.start = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {message}", file=self.out, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        self.log(f"▶ {name}")
        try:
            yield
        except BaseException:
            self.log(f"✗ {name} failed after {time.monotonic() - began:.1f}s")
            raise
        took = time.monotonic() - began
        self.steps.append((name, took))
        self.log(f"✓ {name} ({took:.1f}s)")

    def summary(self) -> None:
        print(f"\n{self.title}: done in {self.elapsed():.1f}s", file=self.out)
        for name, took in self.steps:
            print(f"  {took:7.1f}s  {name}", file=self.out)
        self.out.flush()
