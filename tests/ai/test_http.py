"""The HTTP client against servers that answer badly, byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from agent.ai.backend import InferenceError
from agent.ai.http import post_json, split_url


@asynccontextmanager
async def _raw_server(answer: bytes) -> AsyncIterator[str]:
    """A server that reads one request, writes ``answer`` and hangs up; yields its URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/infer?x=1"
    finally:
        server.close()
        await server.wait_closed()


def _http(status_line: str, *headers: str, body: bytes = b"") -> bytes:
    return ("\r\n".join([status_line, *headers]) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize(("answer", "code", "detail"), [
    (b"SSH-2.0-OpenSSH_9.2\r\n", "bad_response", "did not answer in HTTP/1.x"),
    (_http("HTTP/1.1 200 OK", "Content-Length: 2x"), "bad_response", "bad Content-Length"),
    (_http("HTTP/1.1 200 OK", "Content-Length: \u00b2"), "bad_response", "bad Content-Length"),
    (_http("HTTP/1.1 200 OK", "Transfer-Encoding: chunked", body=b"zz\r\n"),
     "bad_response", "bad chunk size"),
    (_http("HTTP/1.1 200 OK", "Transfer-Encoding: chunked", body=b"2\r\n{}}\r\n0\r\n\r\n"),
     "bad_response", "chunk longer than its size"),
    (_http("HTTP/1.1 200 OK", "Transfer-Encoding: gzip"), "bad_response", "transfer coding"),
    (_http("HTTP/1.1 200 OK", "Content-Encoding: gzip", "Content-Length: 2", body=b"{}"),
     "bad_response", "'gzip'-encoded"),
    (_http("HTTP/1.1 200 OK", "no colon here"), "bad_response", "malformed header"),
    (_http("HTTP/1.1 200 OK", "Content-Length: 5", body=b"hello"), "bad_response", "not JSON"),
    (_http("HTTP/1.1 200 OK", "Content-Length: 2", body=b"[]"), "bad_response", "not an object"),
    (_http("HTTP/1.1 503 Service Unavailable", "Content-Length: 23",
           body=b'{"error": "overloaded"}'), "http_503", "overloaded"),
    (_http("HTTP/1.1 500 Internal Server Error", body=b"<h1>Oops</h1>"), "http_500",
     "<h1>Oops</h1>"),
    (_http("HTTP/1.1 422 Unprocessable Entity", "Content-Length: 999", body=b"{"),
     "http_422", "Unprocessable Entity"),
    (_http("HTTP/1.1 404 Not Found", "Content-Length: 27",
           body=b'{"detail": "no such model"}'), "http_404", "no such model"),
])
async def test_bad_answers_get_a_clear_code(answer, code, detail):
    async with _raw_server(answer) as url:
        with pytest.raises(InferenceError) as info:
            await post_json(url, {"model": "m"}, timeout_s=2.0)
    assert info.value.code == code
    assert detail in info.value.detail


async def test_interim_answers_are_skipped_and_the_status_returned():
    answer = (_http("HTTP/1.1 100 Continue") + _http("HTTP/1.1 103 Early Hints", "Link: </x>")
              + _http("HTTP/1.1 201 Created", "Content-Length: 11", body=b'{"ok":true}'))
    async with _raw_server(answer) as url:
        assert await post_json(url, {}, timeout_s=2.0) == (201, {"ok": True})


def test_url_splitting_names_the_origin_and_keeps_the_query():
    endpoint = split_url("http://[::1]:8080/v1/infer?x=1")
    assert (endpoint.host, endpoint.port, endpoint.target) == ("::1", 8080, "/v1/infer?x=1")
    assert endpoint.origin == "http://[::1]:8080"
    assert split_url("https://api.openai.com").host_header == "api.openai.com"
    with pytest.raises(ValueError, match="non-ASCII"):
        split_url("https://exämple.com")
    with pytest.raises(ValueError):
        split_url("http://host:99999")
    with pytest.raises(ValueError, match="line break"):
        asyncio.run(post_json("http://127.0.0.1:9", {}, headers={"X": "a\r\nb"}, timeout_s=1))
