"""The local stack's sessions (llmcloud/local/login.py) send a request again only as a browser does: once,
on a new connection, when the server closed the connection before any answer (an nginx reload closing a
kept-alive connection). Against a real socket."""

from __future__ import annotations

import socket
import threading

import pytest
import requests

from llmcloud.local.login import session, unanswered

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def _request(conn: socket.socket) -> bytes:
    """One whole request: its head, then as many bytes of body as its Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def _server(*answers: bytes):
    """One connection per answer on 127.0.0.1: reads a request, writes the answer (maybe nothing), closes.
    Returns the address and the list of requests it read."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    read: list[bytes] = []

    def serve():
        with listener:
            for answer in answers:
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    return
                with conn:
                    read.append(_request(conn))
                    if answer:
                        conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/", read


def test_a_connection_closed_before_any_answer_is_sent_again_once():
    url, read = _server(b"", OK)
    answer = session("/nonexistent-ca.pem").post(url, json={"n": 1}, timeout=10)
    assert answer.status_code == 200 and answer.text == "ok"
    assert len(read) == 2 and read[0] == read[1]  # the same request, body included


def test_closed_twice_fails():
    url, read = _server(b"", b"", OK)
    with pytest.raises(requests.ConnectionError):
        session("/nonexistent-ca.pem").get(url, timeout=10)
    assert len(read) == 2


def test_an_error_status_is_never_sent_again():
    url, read = _server(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", OK)
    assert session("/nonexistent-ca.pem").get(url, timeout=10).status_code == 502
    assert len(read) == 1


def test_an_answer_cut_short_is_never_sent_again():
    url, read = _server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{", OK)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        session("/nonexistent-ca.pem").get(url, timeout=10)
    assert len(read) == 1


def test_a_refused_connection_is_never_sent_again():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with pytest.raises(requests.ConnectionError) as raised:
        session("/nonexistent-ca.pem").get(f"http://127.0.0.1:{port}/", timeout=10)
    assert "refused" in str(raised.value).lower() and not unanswered(raised.value)
