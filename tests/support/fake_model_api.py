"""A model API on a loopback port: real HTTP/1.1, and the JSON the real APIs send.

It answers ``POST /v1/chat/completions`` in the exact shape of OpenAI's chat
API (``"echo: <last user message>"`` unless ``reply`` is set) and
``POST /v1/infer`` in Igris's tensor protocol (every input number doubled),
and records each request it read. Tests make it misbehave the way real
servers do:

- ``api_key``: requests without ``Authorization: Bearer <api_key>`` get
  OpenAI's 401 ``invalid_api_key`` error body;
- ``framing``: ``"length"`` (Content-Length), ``"chunked"`` or ``"close"``
  (the body ends when the connection does);
- ``interim``: send a ``100 Continue`` before the answer;
- ``behaviour``: ``"answer"``, ``"stall"`` (read the request, never
  answer), ``"close"`` (hang up without answering) or ``"truncate"``
  (hang up halfway through the answer).

>>> async with FakeModelApi(api_key="sk-test") as api:  # doctest: +SKIP
...     chat = RemoteChat("remote:fake", api.url, "gpt-4o-mini", api_key="sk-test")
"""

from __future__ import annotations

import asyncio
import http
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

MODEL_VERSION = "gpt-4o-mini-2024-07-18"


@dataclass
class ReceivedRequest:
    """One request as the server read it off the socket."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any


@dataclass
class FakeModelApi:
    """The server; see the module docstring for what each setting makes it do."""

    api_key: str | None = None
    framing: str = "length"
    behaviour: str = "answer"
    interim: bool = False
    reply: str | None = None
    tls: ssl.SSLContext | None = None
    requests: list[ReceivedRequest] = field(default_factory=list)
    _server: asyncio.Server | None = field(default=None, init=False, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None, "use 'async with FakeModelApi() as api'"
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    async def __aenter__(self) -> FakeModelApi:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await _read_request(reader)
            self.requests.append(request)
            if self.behaviour == "stall":
                await asyncio.Event().wait()  # until the test ends and cancels us
            if self.behaviour == "close":
                return
            status, doc = self._answer(request)
            await self._send(writer, status, doc)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client gave up first: that is what some tests check
        finally:
            writer.close()
            self._tasks.discard(task)

    def _answer(self, request: ReceivedRequest) -> tuple[int, dict[str, Any]]:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, _openai_error(
                "Incorrect API key provided: sk-wr***ng. You can find your API key at "
                "https://platform.openai.com/account/api-keys.", "invalid_api_key")
        if (request.method, request.path) == ("POST", "/v1/chat/completions"):
            return 200, self._completion(request.body)
        if (request.method, request.path) == ("POST", "/v1/infer"):
            return 200, {"model": request.body["model"],
                         "outputs": _doubled(request.body["inputs"])}
        return 404, _openai_error(f"Unknown request URL: {request.method} {request.path}.",
                                  "unknown_url")

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        last = body["messages"][-1]["content"]
        content = self.reply if self.reply is not None else f"echo: {last}"
        prompt = sum(len(m["content"].split()) for m in body["messages"])
        completion = len(content.split())
        return {
            "id": "chatcmpl-9xYzFake", "object": "chat.completion", "created": 1718000000,
            "model": MODEL_VERSION,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None, "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            "system_fingerprint": "fp_fake",
        }

    async def _send(self, writer: asyncio.StreamWriter, status: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
                "Content-Type: application/json", "Connection: close"]
        if self.framing == "length":
            head.append(f"Content-Length: {len(data)}")
            body = data
        elif self.framing == "chunked":
            head.append("Transfer-Encoding: chunked")
            pieces = [data[i:i + 50] for i in range(0, len(data), 50)]
            body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        else:
            body = data
        wire = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        if self.interim:
            wire = b"HTTP/1.1 100 Continue\r\n\r\n" + wire
        if self.behaviour == "truncate":
            wire = wire[: len(wire) - len(body) // 2]
        writer.write(wire)
        await writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> ReceivedRequest:
    method, path, _ = (await reader.readline()).decode().split(" ", 2)
    headers: dict[str, str] = {}
    while (line := (await reader.readline()).decode().rstrip("\r\n")):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    return ReceivedRequest(method, path, headers, json.loads(raw) if raw else None)


def _openai_error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": code}}


def _doubled(value: Any) -> Any:
    return [_doubled(v) for v in value] if isinstance(value, list) else value * 2
