"""Remote backends: a model API over HTTP, for work too big for the fleet.

Two protocols, both JSON over HTTP(S) with ``Authorization: Bearer <key>``
when a key is configured:

**Chat** (:class:`RemoteChat`, text tasks such as planning) speaks the
OpenAI-compatible chat API, which OpenAI, llama.cpp's server, vLLM,
Ollama and most hosted APIs accept::

    POST {url}/v1/chat/completions
    {"model": "gpt-4o-mini", "temperature": 0.0,
     "messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "<request.text>"}]}
    200 {"choices": [{"message": {"content": "..."}}],
         "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}

**Tensor** (:class:`RemoteTensor`, the same models the fleet runs, on a
bigger machine) is Igris's own small protocol::

    POST {url}/v1/infer
    {"model": "digits-mlp", "inputs": [[0.0, 0.5, ...]]}
    200 {"outputs": [[0.01, 0.97, ...]]}

``inputs`` and ``outputs`` are nested JSON arrays shaped like the model's
input and output tensors; a server may add other keys (ignored). Errors
use OpenAI's shape, ``{"error": {"message": "..."}}`` with a 4xx/5xx status,
and surface as ``InferenceError("http_<status>", message)``.

``url`` is the server's base (``https://api.openai.com``); a base that
already ends in ``/v1``, as OpenAI's SDKs write it, is accepted too.

The router keeps private work on the device; these backends also refuse a
request marked ``private`` before opening any connection, so a routing bug
cannot leak it.
"""

from __future__ import annotations

import os
import ssl
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.ai.backend import REMOTE, InferenceError, InferRequest, InferResult
from agent.ai.http import DEFAULT_MAX_BYTES, post_json, split_url
from agent.errors import KeyFileInvalid

_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def load_api_key(
    file: str | None, env: str | None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The API key: from ``file`` if given, else from the variable ``env``, else None.

    The file must be readable by its owner only (like the agent's own keys),
    because a key that any local user can read is a key that leaks. The key
    is never logged, and errors never quote it.
    """
    if file:
        path = Path(file)
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyFileInvalid(
                    f"API key file {file!r} has mode {stat.S_IMODE(mode):04o}; "
                    f"others may read it. Fix with: chmod 600 {file}"
                )
            key = path.read_text().strip()
        except OSError as exc:
            raise KeyFileInvalid(f"API key file {file!r}: {exc.strerror or exc}") from None
        except UnicodeError:
            raise KeyFileInvalid(f"API key file {file!r} is not text") from None
        return _checked_key(key, f"API key file {file!r}")
    if env and environ.get(env, "").strip():
        return _checked_key(environ[env].strip(), f"environment variable {env}")
    return None


def _checked_key(key: str, where: str) -> str:
    # A key goes into a header line: a line break or a space would corrupt the request.
    if not key or not key.isascii() or not key.isprintable() or " " in key:
        raise KeyFileInvalid(f"{where} must hold one key: printable ASCII, no spaces")
    return key


def _endpoint_url(base: str, path: str) -> str:
    root = base.rstrip("/")
    return (root[: -len("/v1")] if root.endswith("/v1") else root) + path


class _HttpBackend:
    """What both remote backends share: URL, key, deadline, privacy and model checks."""

    kind = REMOTE

    def __init__(
        self,
        name: str,
        url: str,
        path: str,
        models: Sequence[str],
        *,
        api_key: str | None,
        timeout_s: float,
        accuracy: Callable[[str], float | None],
        ca_file: str | None,
        max_bytes: int,
        clock: Callable[[], float],
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        scheme = split_url(url).scheme  # a bad URL fails here, not on the first request
        self.name = name
        self.url = url
        self._endpoint = _endpoint_url(url, path)
        self._models = tuple(models)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout_s = timeout_s
        self._accuracy = accuracy
        self._max_bytes = max_bytes
        self._clock = clock
        # Built once: loading a CA store takes tens of milliseconds on a Pi Zero.
        self._tls = (ssl.create_default_context(cafile=ca_file)
                     if scheme == "https" else None)

    @property
    def models(self) -> Sequence[str]:
        return self._models

    def accuracy(self, model: str) -> float | None:
        return self._accuracy(model)

    def __repr__(self) -> str:  # the key stays out: reprs end up in logs
        key = "set" if self._headers else "none"
        return f"<{type(self).__name__} {self.name} {self.url} {list(self._models)} key={key}>"

    async def _post(
        self, request: InferRequest, body: dict[str, Any]
    ) -> tuple[dict[str, Any], float]:
        """Send ``body`` within the request's deadline; the answer and the latency in ms."""
        if request.private:
            raise InferenceError("private", f"{self.name} never sends a private request")
        if request.model not in self._models:
            raise InferenceError("unknown_model", f"{self.name} does not serve {request.model!r}")
        timeout_s = self._timeout_s
        if request.deadline_ms is not None:
            timeout_s = min(timeout_s, max(request.deadline_ms, 0.0) / 1000)
        started = self._clock()
        _, answer = await post_json(
            self._endpoint, body, headers=self._headers, timeout_s=timeout_s,
            max_bytes=self._max_bytes, tls=self._tls,
        )
        return answer, (self._clock() - started) * 1000


class RemoteChat(_HttpBackend):
    """Text tasks on an OpenAI-compatible chat API.

    ``model`` is the API's model name; ``tasks`` are the request models
    (task names) it answers. The answer's ``outputs`` is the reply text;
    ``extra`` holds the token counts the API reported.

    >>> chat = RemoteChat("remote:openai", "https://api.openai.com", "gpt-4o-mini",
    ...                   api_key=load_api_key(None, "IGRIS_AI_API_KEY"))  # doctest: +SKIP
    >>> (await chat.infer(InferRequest("text", text="Plan a sensor sweep"))).outputs
    ...                                                                  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        url: str,
        model: str,
        *,
        tasks: Sequence[str] = ("text",),
        api_key: str | None = None,
        timeout_s: float = 10.0,
        system: str | None = None,
        temperature: float = 0.0,
        accuracy: Callable[[str], float | None] = lambda _m: None,
        ca_file: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not model:
            raise ValueError("RemoteChat needs the API's model name (e.g. 'gpt-4o-mini')")
        super().__init__(name, url, "/v1/chat/completions", tasks, api_key=api_key,
                         timeout_s=timeout_s, accuracy=accuracy, ca_file=ca_file,
                         max_bytes=max_bytes, clock=clock)
        self.model = model
        self._system = system
        self._temperature = temperature

    async def infer(self, request: InferRequest) -> InferResult:
        if not isinstance(request.text, str):
            raise InferenceError("bad_input", f"{self.name} answers text requests only")
        messages = [{"role": "system", "content": self._system}] if self._system else []
        messages.append({"role": "user", "content": request.text})
        body = {"model": self.model, "messages": messages, "temperature": self._temperature}
        answer, ms = await self._post(request, body)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise InferenceError("bad_response", f"{self.name}: no choices[0].message.content")
        usage = answer.get("usage")
        extra = ({k: usage[k] for k in _USAGE_KEYS if isinstance(usage.get(k), int)}
                 if isinstance(usage, dict) else {})
        return InferResult(content, self.name, ms, extra)


class RemoteTensor(_HttpBackend):
    """Tensor models on a server speaking the JSON protocol in the module docstring.

    >>> big = RemoteTensor("remote:lab", "http://gpu-box.lab:8000", ["digits-cnn"])
    ...                                                                  # doctest: +SKIP
    >>> (await big.infer(InferRequest("digits-cnn", inputs=pixels))).outputs  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        url: str,
        models: Sequence[str],
        *,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        accuracy: Callable[[str], float | None] = lambda _m: None,
        ca_file: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(name, url, "/v1/infer", models, api_key=api_key,
                         timeout_s=timeout_s, accuracy=accuracy, ca_file=ca_file,
                         max_bytes=max_bytes, clock=clock)

    async def infer(self, request: InferRequest) -> InferResult:
        inputs = request.inputs
        if inputs is None:
            raise InferenceError("bad_input", f"{self.name} needs tensor inputs")
        if hasattr(inputs, "tolist"):  # a numpy array from a local pre-processing step
            inputs = inputs.tolist()
        answer, ms = await self._post(request, {"model": request.model, "inputs": inputs})
        outputs = answer.get("outputs")
        if not isinstance(outputs, list):
            raise InferenceError("bad_response", f"{self.name}: no 'outputs' array")
        return InferResult(outputs, self.name, ms)
