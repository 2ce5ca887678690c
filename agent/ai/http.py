"""A small async HTTP/1.1 client for model APIs, on asyncio streams (stdlib only).

Why our own: ``urllib`` blocks (each call would take an executor thread and
could not be abandoned at a deadline), and a Pi Zero 2 W has no room for
another dependency. A model API needs little: POST one JSON document, read
one JSON answer. So each call opens a connection, sends the request with
``Connection: close``, reads one response (framed by ``Content-Length``,
chunked, or by the server closing) and closes. No pooling, redirects,
proxies or compression: fewer ways to hang.

One deadline covers everything (DNS, connect, TLS handshake, send, read),
and the body is capped, so a slow or hostile server costs at most
``timeout_s`` and ``max_bytes``. Failures are :class:`InferenceError` with
a countable code:

==================  ====================================================
``unreachable``     DNS failure, connection refused, no route
``tls``             TLS handshake or certificate check failed
``timeout``         no complete answer within ``timeout_s``
``http_<status>``   a non-2xx answer; the detail is the server's message
``bad_response``    not HTTP, not a JSON object, too large, or the
                    connection dropped before the answer was complete
``bad_input``       the body cannot be sent as JSON (NaN, non-JSON types)
==================  ====================================================

>>> status, answer = await post_json("http://127.0.0.1:8080/v1/infer", {"model": "m"},
...                                   timeout_s=5.0)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import ssl
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agent import __version__
from agent.ai.backend import InferenceError

DEFAULT_MAX_BYTES = 1 << 20
_MAX_HEADER_LINES = 100
_MAX_MESSAGE_CHARS = 300  # of a server's error message, so logs stay readable
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a request goes, split once (see :func:`split_url`)."""

    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent on the request line

    @property
    def origin(self) -> str:
        """``scheme://host:port``: what error messages name (never the path or a query)."""
        return f"{self.scheme}://{self._host_text}:{self.port}"

    @property
    def host_header(self) -> str:
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return self._host_text
        return f"{self._host_text}:{self.port}"

    @property
    def _host_text(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


def split_url(url: str) -> Endpoint:
    """Check and split an ``http://`` or ``https://`` URL; ``ValueError`` says what is wrong.

    Credentials in the URL are refused: they would end up in logs and
    ``repr()``s. Give the API key through a file or the environment instead.
    """
    if not url.isascii():
        raise ValueError(f"URL {url!r} holds non-ASCII characters; percent-encode them")
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are refused; use an API key file instead")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]  # .port raises ValueError if bad
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Endpoint(parts.scheme, parts.hostname, port, target)


async def post_json(
    url: str,
    body: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as JSON; return the 2xx status and the JSON object answered.

    ``tls`` is used for ``https://`` (default: the system's CA store; build
    it once per backend, loading CAs is slow on small boards). Raises
    :class:`InferenceError` (codes in the module docstring) and
    ``ValueError`` for a malformed URL or header.
    """
    endpoint = split_url(url)
    try:
        payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InferenceError("bad_input", f"the request is not JSON: {exc}") from None
    request = _request_head(endpoint, len(payload), headers or {}) + payload
    if endpoint.scheme == "https" and tls is None:
        tls = ssl.create_default_context()
    try:
        return await asyncio.wait_for(
            _exchange(endpoint, request, max_bytes, tls), timeout_s
        )
    except asyncio.TimeoutError:
        raise InferenceError(
            "timeout", f"no complete answer from {endpoint.origin} within {timeout_s:g} s"
        ) from None


def _request_head(endpoint: Endpoint, length: int, headers: Mapping[str, str]) -> bytes:
    lines = [
        f"POST {endpoint.target} HTTP/1.1",
        f"Host: {endpoint.host_header}",
        f"User-Agent: igris/{__version__}",
        "Accept: application/json",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        "Connection: close",
    ]
    for name, value in headers.items():
        # The value is not echoed: it is usually the API key.
        if not (name + value).isascii() or any(c in name + value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} holds a line break or non-ASCII characters")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _bad(endpoint: Endpoint, what: str) -> InferenceError:
    return InferenceError("bad_response", f"{endpoint.origin} {what}")


async def _exchange(
    endpoint: Endpoint, request: bytes, max_bytes: int, tls: ssl.SSLContext | None
) -> tuple[int, dict[str, Any]]:
    try:
        reader, writer = await asyncio.open_connection(
            endpoint.host, endpoint.port, ssl=tls if endpoint.scheme == "https" else None
        )
    except ssl.SSLError as exc:  # before OSError: SSLError is one
        raise InferenceError("tls", f"{endpoint.origin}: {exc.reason or exc}") from None
    except OSError as exc:
        raise InferenceError("unreachable", f"{endpoint.origin}: {exc.strerror or exc}") from None
    try:
        writer.write(request)
        await writer.drain()
        status, reason, fields = await _read_head(reader, endpoint)
        ok = 200 <= status < 300
        try:
            data = await _read_body(reader, fields, max_bytes, endpoint)
        except (InferenceError, asyncio.IncompleteReadError, OSError):
            if ok:
                raise
            data = b""  # the status says more than a broken error page would
    except asyncio.IncompleteReadError:
        raise _bad(endpoint, "closed the connection mid-response") from None
    except OSError as exc:
        raise _bad(endpoint, f"dropped the connection: {exc.strerror or exc}") from None
    finally:
        # Not awaited: wait_closed() can stall on a TLS close, and the deadline matters more.
        writer.close()
    if not ok:
        raise InferenceError(f"http_{status}", _error_message(data, reason))
    try:
        doc = json.loads(data)
    except ValueError:
        raise _bad(endpoint, f"answered {status} with a body that is not JSON") from None
    if not isinstance(doc, dict):
        raise _bad(endpoint, f"answered {status} with JSON that is not an object")
    return status, doc


async def _line(reader: asyncio.StreamReader, endpoint: Endpoint) -> str:
    try:
        raw = await reader.readline()
    except ValueError:  # longer than the reader's limit (64 KiB)
        raise _bad(endpoint, "sent a header line too long") from None
    if not raw.endswith(b"\n"):
        raise _bad(endpoint, "closed the connection mid-response")
    return raw.decode("latin-1").rstrip("\r\n")


async def _read_head(
    reader: asyncio.StreamReader, endpoint: Endpoint
) -> tuple[int, str, dict[str, str]]:
    """Status line and header fields, skipping any interim ``1xx`` responses."""
    while True:
        line = await _line(reader, endpoint)
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not _is_digits(code, 3):
            raise _bad(endpoint, f"did not answer in HTTP/1.x: {line[:80]!r}")
        fields = await _read_fields(reader, endpoint)
        if not code.startswith("1"):
            return int(code), reason, fields


async def _read_fields(reader: asyncio.StreamReader, endpoint: Endpoint) -> dict[str, str]:
    fields: dict[str, str] = {}
    for _ in range(_MAX_HEADER_LINES):
        line = await _line(reader, endpoint)
        if not line:
            return fields
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _bad(endpoint, f"sent a malformed header line: {line[:80]!r}")
        name, value = name.lower(), value.strip()
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    raise _bad(endpoint, f"sent more than {_MAX_HEADER_LINES} header lines")


async def _read_body(
    reader: asyncio.StreamReader, fields: dict[str, str], max_bytes: int, endpoint: Endpoint
) -> bytes:
    if fields.get("content-encoding", "identity").lower() != "identity":
        raise _bad(endpoint, f"sent a {fields['content-encoding']!r}-encoded body unasked")
    coding = fields.get("transfer-encoding", "").lower()
    if coding:
        if coding != "chunked":
            raise _bad(endpoint, f"used transfer coding {coding!r}; only 'chunked' is read")
        return await _read_chunked(reader, max_bytes, endpoint)
    if "content-length" in fields:
        length = fields["content-length"]
        if not _is_digits(length):
            raise _bad(endpoint, f"sent a bad Content-Length {length[:40]!r}")
        if int(length) > max_bytes:
            raise _bad(endpoint, f"answered {length} bytes, over the {max_bytes} bytes allowed")
        return await reader.readexactly(int(length))
    data = bytearray()  # no framing: the body ends when the server closes
    while chunk := await reader.read(65536):
        data += chunk
        if len(data) > max_bytes:
            raise _bad(endpoint, f"answered over the {max_bytes} bytes allowed")
    return bytes(data)


async def _read_chunked(reader: asyncio.StreamReader, max_bytes: int, endpoint: Endpoint) -> bytes:
    data = bytearray()
    while True:
        size = (await _line(reader, endpoint)).partition(";")[0].strip()
        if not size or any(c not in string.hexdigits for c in size):
            raise _bad(endpoint, f"sent a bad chunk size {size[:40]!r}")
        if int(size, 16) == 0:
            await _read_fields(reader, endpoint)  # trailers, ignored
            return bytes(data)
        if len(data) + int(size, 16) > max_bytes:
            raise _bad(endpoint, f"answered over the {max_bytes} bytes allowed")
        data += await reader.readexactly(int(size, 16))
        if await reader.readexactly(2) != b"\r\n":
            raise _bad(endpoint, "sent a chunk longer than its size")


def _is_digits(text: str, length: int | None = None) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts '²' and other Unicode digits."""
    ok = bool(text) and all(c in string.digits for c in text)
    return ok and (length is None or len(text) == length)


def _error_message(data: bytes, reason: str) -> str:
    """The server's own words: OpenAI's ``{"error": {"message": ...}}`` and common variants."""
    message: Any = None
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        error = doc.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or doc.get("message") or doc.get("detail")
    if not isinstance(message, str) or not message:
        message = data.decode("utf-8", "replace").strip() if doc is None and data else reason
    return message[:_MAX_MESSAGE_CHARS]
