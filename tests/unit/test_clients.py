"""The clients that keep asking during rolling changes (tests/clients.py): what they send again, and what
they count as failed, against a real socket that closes as a kept-alive connection does on an nginx reload."""

from __future__ import annotations

import socket
import threading

import pytest

from llmcloud.local.login import unanswered


def _server(answer: bytes):
    """A one-connection server on 127.0.0.1: reads a request, writes `answer` (maybe nothing), closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            if answer:
                conn.sendall(answer)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/v1"


def _ask(base_url: str) -> BaseException:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=10)
    with pytest.raises(Exception) as raised:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    return raised.value


def test_a_connection_closed_before_any_answer_is_sent_again():
    assert unanswered(_ask(_server(b"")))


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    ],
    ids=["502", "cut-short"],
)
def test_an_answer_that_began_is_never_sent_again(answer):
    assert not unanswered(_ask(_server(answer)))


def test_a_refused_connection_is_never_sent_again():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    assert not unanswered(_ask(f"http://127.0.0.1:{port}/v1"))
