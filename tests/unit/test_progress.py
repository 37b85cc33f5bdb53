"""Long work is never silent: named steps, and steps side by side that each say how they ended."""

from __future__ import annotations

import io
import threading

import pytest

from llmcloud.errors import UserError
from llmcloud.progress import Progress


def test_steps_side_by_side_run_at_once_and_return_by_name():
    both = threading.Barrier(2, timeout=10)  # passes only when both steps run at the same time

    def step(value):
        def run(progress):
            progress.log("waiting for the other")
            both.wait()
            return value

        return run

    out = io.StringIO()
    progress = Progress("t", out)
    assert progress.side_by_side({"first": step(1), "second": step(2)}) == {"first": 1, "second": 2}
    lines = out.getvalue().splitlines()
    assert any("first │ waiting for the other" in line for line in lines)
    assert any("✓ second" in line for line in lines)
    assert {name for name, _ in progress.steps} == {"first", "second"}


def test_a_failed_step_is_named_and_the_others_still_finish():
    finished = threading.Event()

    def slow(progress):
        finished.wait(0.2)
        finished.set()
        return "built"

    def broken(progress):
        raise UserError("go build failed", "install Go")

    out = io.StringIO()
    with pytest.raises(UserError, match="go build failed"):
        Progress("t", out).side_by_side({"image": slow, "binary": broken})
    assert finished.is_set(), "a failure must not leave another step half done"
    assert "✗ binary failed" in out.getvalue() and "✓ image" in out.getvalue()


def test_several_failures_are_reported_together_with_their_fixes():
    def fail(cause):
        def run(progress):
            raise UserError(cause, f"fix {cause}")

        return run

    with pytest.raises(UserError) as caught:
        Progress("t", io.StringIO()).side_by_side({"a": fail("one"), "b": fail("two"), "c": lambda p: 3})
    assert "2 of 3 steps side by side failed: a: one; b: two" in caught.value.cause
    assert caught.value.fix == "fix one; fix two"
