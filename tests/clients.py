"""Clients that keep asking the endpoint while something changes under them (integration, provision):
every request's (start, ok, error), so that a test can say how many failed and when."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from llmcloud.local.login import unanswered


def client_loop(endpoint: dict, model: str, stop: threading.Event, results: list, worker: int) -> None:
    """One client of the endpoint (the openai client, its retries off), streamed (odd workers) or not, about 2
    requests a second, below the rate limits. ``endpoint``: openai_base_url, api_key, ca_bundle.

    Every failure counts: an error status (a 502 too), a refused or reset connection, a stream cut short. The
    one exception: a request no answer began for on a kept-alive connection (`unanswered`), sent again once
    as a browser does; failed if that fails too, and its result says it was sent again."""
    from openai import DefaultHttpxClient, OpenAI

    with DefaultHttpxClient(verify=endpoint["ca_bundle"], trust_env=False, timeout=60) as http:
        client = OpenAI(
            base_url=endpoint["openai_base_url"], api_key=endpoint["api_key"], http_client=http, max_retries=0
        )
        ask = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}

        def once() -> None:
            if worker % 2:
                chunks = list(client.chat.completions.create(stream=True, **ask))
                assert chunks and chunks[-1].choices[0].finish_reason == "length"
            else:
                assert client.chat.completions.create(**ask).choices[0].message.content

        while not stop.is_set():
            began = time.monotonic()
            note = ""
            try:
                try:
                    once()
                except Exception as error:
                    if not unanswered(error):
                        raise
                    note = f"sent again after {error!r}"[:300]
                    once()
                results.append((began, True, note))
            except Exception as error:  # every other failure counts, whatever it is
                results.append((began, False, repr(error)[:300]))
            time.sleep(max(0.0, 0.5 - (time.monotonic() - began)))


def tally(results: list) -> str:
    """How many of the requests failed, and how many were sent again (see client_loop)."""
    failed = sum(1 for r in results if not r[1])
    again = sum(1 for r in results if r[1] and r[2])
    return f"{failed} of {len(results)} requests failed ({again} sent again: a kept-alive connection closed)"


@contextmanager
def asking(endpoint: dict, model: str, workers: int = 4, settle: float = 3.0) -> Iterator[list]:
    """``workers`` clients (half of them streamed) ask while the block runs, from ``settle`` seconds before it
    to ``settle`` seconds after; yields the list their results go into (complete once the block has left)."""
    stop, results = threading.Event(), []
    with ThreadPoolExecutor(workers) as pool:
        clients = [pool.submit(client_loop, endpoint, model, stop, results, i) for i in range(workers)]
        try:
            time.sleep(settle)
            yield results
            time.sleep(settle)
        finally:
            stop.set()
        for client in clients:
            client.result()
