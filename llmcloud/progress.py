"""Named steps with elapsed time, so long work is never silent."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TextIO, TypeVar

from llmcloud.errors import UserError

T = TypeVar("T")


class Progress:
    def __init__(self, title: str, out: TextIO | None = None, prefix: str = "", start: float | None = None):
        self.title = title
        self.out = out if out is not None else sys.stderr  # looked up now: tests and callers may redirect it
        self.start = time.monotonic() if start is None else start
        self.prefix = prefix
        self.steps: list[tuple[str, float]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {self.prefix}{message}", file=self.out, flush=True)

    def child(self, name: str) -> Progress:
        """The same clock and output, each line marked with ``name`` (a step among others side by side)."""
        return Progress(self.title, self.out, f"{self.prefix}{name} │ ", self.start)

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
        self.steps.append((name, took))  # one append: safe from the threads of side_by_side
        self.log(f"✓ {name} ({took:.1f}s)")

    def side_by_side(self, steps: dict[str, Callable[[Progress], T]]) -> dict[str, T]:
        """Run independent steps at once, each a step of its own whose lines carry its name.

        Every step runs to its end, then the failures are raised together, each named: a step never leaves
        another half done. Returns {name: result}.
        """
        if not steps:
            return {}
        results: dict[str, T] = {}
        failures: list[tuple[str, BaseException]] = []

        def run(name: str, fn: Callable[[Progress], T]) -> None:
            try:
                with self.step(name):
                    results[name] = fn(self.child(name))
            except BaseException as exc:
                failures.append((name, exc))

        with ThreadPoolExecutor(max_workers=len(steps), thread_name_prefix="llmcloud-step") as pool:
            for future in [pool.submit(run, name, fn) for name, fn in steps.items()]:
                future.result()
        failures.sort(key=lambda failure: list(steps).index(failure[0]))
        if len(failures) == 1:
            raise failures[0][1]  # the step's own error, named by its ✗ line above
        if failures:
            causes = "; ".join(f"{name}: {_first_line(exc)}" for name, exc in failures)
            fixes = [exc.fix for _, exc in failures if isinstance(exc, UserError) and exc.fix]
            raise UserError(
                f"{len(failures)} of {len(steps)} steps side by side failed: {causes}",
                "; ".join(fixes) or "see the lines marked ✗ above",
            ) from failures[0][1]
        return {name: results[name] for name in steps}

    def summary(self) -> None:
        print(f"\n{self.title}: done in {self.elapsed():.1f}s", file=self.out)
        for name, took in self.steps:
            print(f"  {took:7.1f}s  {name}", file=self.out)
        self.out.flush()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
