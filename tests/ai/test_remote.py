"""The remote backends against a loopback server speaking real HTTP/1.1 and OpenAI's JSON."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import time
from array import array
from pathlib import Path

import pytest

from agent.ai.backend import REMOTE, InferenceError, InferRequest
from agent.ai.remote import RemoteChat, RemoteTensor, load_api_key
from agent.config import load_config
from agent.errors import ConfigInvalid, KeyFileInvalid
from tests.support.fake_model_api import FakeModelApi

KEY = "sk-test-0123456789abcdef"


def _chat(url: str, **kwargs) -> RemoteChat:
    return RemoteChat("remote:fake", url, "gpt-4o-mini", **kwargs)


async def _fails(backend, request: InferRequest) -> tuple[InferenceError, float]:
    started = time.monotonic()
    with pytest.raises(InferenceError) as info:
        await backend.infer(request)
    return info.value, time.monotonic() - started


async def test_chat_round_trip_sends_openai_json_and_the_bearer_key():
    async with FakeModelApi(api_key=KEY) as api:
        chat = _chat(api.url, api_key=KEY, system="You plan sensor sweeps.", temperature=0.2,
                     accuracy=lambda m: 0.9 if m == "text" else None)
        result = await chat.infer(InferRequest("text", text="Plan a sweep of bay 3"))

    assert (chat.kind, list(chat.models), chat.accuracy("text")) == (REMOTE, ["text"], 0.9)
    assert result.outputs == "echo: Plan a sweep of bay 3"
    assert result.backend == "remote:fake" and result.latency_ms > 0
    assert result.extra == {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}
    (sent,) = api.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == {
        "model": "gpt-4o-mini", "temperature": 0.2,
        "messages": [{"role": "system", "content": "You plan sensor sweeps."},
                     {"role": "user", "content": "Plan a sweep of bay 3"}],
    }


async def test_tensor_round_trip_and_a_base_url_ending_in_v1():
    async with FakeModelApi() as api:
        tensor = RemoteTensor("remote:lab", api.url + "/v1/", ["digits-cnn"])
        result = await tensor.infer(InferRequest("digits-cnn", inputs=[[0.5, 1.0], [2.0, 0]]))
        from_array = await tensor.infer(InferRequest("digits-cnn", inputs=array("d", [1.5])))

    assert result.outputs == [[1.0, 2.0], [4.0, 0]] and from_array.outputs == [3.0]
    assert api.requests[0].path == "/v1/infer"
    assert api.requests[0].body == {"model": "digits-cnn", "inputs": [[0.5, 1.0], [2.0, 0]]}
    assert "authorization" not in api.requests[0].headers
    assert tensor.accuracy("digits-cnn") is None


async def test_openai_error_body_becomes_http_401_with_its_message():
    async with FakeModelApi(api_key=KEY) as api:
        error, _ = await _fails(_chat(api.url, api_key="sk-wrong"),
                                InferRequest("text", text="hi"))
    assert error.code == "http_401"
    assert error.detail.startswith("Incorrect API key provided: sk-wr***ng.")


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_chunked_and_unframed_answers_are_read_after_an_interim_100(framing):
    async with FakeModelApi(framing=framing, interim=True) as api:
        api.reply = "a plan " * 200  # several chunks
        result = await _chat(api.url).infer(InferRequest("text", text="plan"))
    assert result.outputs == "a plan " * 200


@pytest.mark.parametrize(("behaviour", "framing"), [
    ("close", "length"), ("truncate", "length"), ("truncate", "chunked"), ("truncate", "close"),
])
async def test_remote_dying_mid_request_fails_fast_with_bad_response(behaviour, framing):
    async with FakeModelApi(behaviour=behaviour, framing=framing) as api:
        error, took = await _fails(_chat(api.url, timeout_s=5.0),
                                   InferRequest("text", text="plan"))
    assert error.code == "bad_response", error
    assert took < 0.5
    assert len(api.requests) == 1


@pytest.mark.parametrize(("timeout_s", "deadline_ms"), [(0.3, None), (5.0, 300)])
async def test_slow_server_times_out_at_the_deadline(timeout_s, deadline_ms):
    async with FakeModelApi(behaviour="stall") as api:
        tensor = RemoteTensor("remote:lab", api.url, ["m"], timeout_s=timeout_s)
        error, took = await _fails(tensor, InferRequest("m", inputs=[1], deadline_ms=deadline_ms))
    assert error.code == "timeout" and "0.3 s" in error.detail
    assert 0.29 <= took < 0.5  # well under twice the deadline


async def test_connection_refused_is_unreachable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error, took = await _fails(RemoteTensor("remote:lab", f"http://127.0.0.1:{port}", ["m"]),
                               InferRequest("m", inputs=[1]))
    assert error.code == "unreachable" and f"127.0.0.1:{port}" in error.detail
    assert took < 0.5


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_oversize_answer_is_bad_response(framing):
    async with FakeModelApi(framing=framing) as api:
        api.reply = "x" * 20_000
        error, _ = await _fails(_chat(api.url, max_bytes=10_000),
                                InferRequest("text", text="plan"))
    assert error.code == "bad_response" and "10000 bytes" in error.detail


async def test_private_unknown_and_malformed_requests_never_leave_the_device():
    async with FakeModelApi() as api:
        chat, tensor = _chat(api.url), RemoteTensor("remote:lab", api.url, ["m"])
        cases = [
            (chat, InferRequest("text", text="secret", private=True), "private"),
            (chat, InferRequest("text"), "bad_input"),
            (chat, InferRequest("vision", text="hi"), "unknown_model"),
            (tensor, InferRequest("m"), "bad_input"),
            (tensor, InferRequest("m", inputs=[float("nan")]), "bad_input"),
        ]
        for backend, request, code in cases:
            error, _ = await _fails(backend, request)
            assert error.code == code, (request, error)
    assert api.requests == []


def test_credentials_in_the_url_are_refused_and_the_key_never_shows():
    with pytest.raises(ValueError, match="credentials in the URL"):
        _chat("https://user:sk-secret@api.example.com")
    with pytest.raises(ValueError, match="not an http"):
        RemoteTensor("remote:lab", "ftp://host", ["m"])
    chat = _chat("http://127.0.0.1:9", api_key=KEY)
    assert KEY not in repr(chat) and "key=set" in repr(chat)


# --------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def loopback_cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (our own CA, unknown to the system)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_https_with_a_private_ca_and_refused_without_it(loopback_cert):
    cert, key = loopback_cert
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    async with FakeModelApi(tls=server_tls) as api:
        result = await _chat(api.url, ca_file=str(cert)).infer(InferRequest("text", text="hi"))
        error, _ = await _fails(_chat(api.url), InferRequest("text", text="hi"))
    assert result.outputs == "echo: hi"
    assert error.code == "tls" and "CERTIFICATE_VERIFY_FAILED" in error.detail


# --------------------------------------------------------------------- API key


def _key_file(tmp_path: Path, mode: int, text: str = KEY + "\n") -> str:
    path = tmp_path / "api.key"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_api_key_file_others_may_read_is_refused(tmp_path, mode):
    path = _key_file(tmp_path, mode)
    with pytest.raises(KeyFileInvalid, match=f"chmod 600 {path}") as info:
        load_api_key(path, None)
    assert KEY not in str(info.value)


def test_api_key_file_wins_then_environment_then_none(tmp_path):
    env = {"IGRIS_AI_API_KEY": " sk-from-env\n"}
    assert load_api_key(_key_file(tmp_path, 0o600), "IGRIS_AI_API_KEY", env) == KEY
    assert load_api_key(None, "IGRIS_AI_API_KEY", env) == "sk-from-env"
    assert load_api_key("", "OPENAI_API_KEY", env) is None
    assert load_api_key(None, None, env) is None


def test_api_key_file_missing_or_not_one_key_is_refused(tmp_path):
    with pytest.raises(KeyFileInvalid, match="No such file"):
        load_api_key(str(tmp_path / "absent.key"), None)
    with pytest.raises(KeyFileInvalid, match="one key") as info:
        load_api_key(_key_file(tmp_path, 0o600, "sk-one\nsk-two\n"), None)
    assert "sk-one" not in str(info.value)


# --------------------------------------------------------------------- configuration


def test_ai_settings_load_and_the_key_variable_is_not_taken_for_a_setting(tmp_path):
    config = load_config(tmp_path, environ={
        "IGRIS_AI_API_KEY": KEY,
        "IGRIS_AI_REMOTE_URL": "https://api.openai.com",
        "IGRIS_AI_API_KEY_FILE": "/etc/igris/openai.key",
        "IGRIS_AI_REMOTE_SERVES": "text, plan",
    })
    assert config.ai.remote_url == "https://api.openai.com"
    assert config.ai.api_key_env == "IGRIS_AI_API_KEY" and config.ai.remote_kind == "chat"
    assert config.to_dict()["ai"]["api_key_file"] == "***"
    assert config.ai.api_key_file == "/etc/igris/openai.key"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("REMOTE_URL", "api.openai.com", "no remote: nothing leaves the device"),
    ("REMOTE_KIND", "grpc", "one of 'chat', 'tensor'"),
    ("REMOTE_SERVES", "text,,plan", "comma-separated names"),
    ("REMOTE_ACCURACY", "97", "from 0 to 1"),
    ("API_KEY_ENV", "IGRIS_MQTT_KEY", "outside IGRIS_"),
])
def test_bad_ai_settings_say_what_is_expected(tmp_path, key, value, message):
    with pytest.raises(ConfigInvalid, match=message):
        load_config(tmp_path, environ={f"IGRIS_AI_{key}": value})


async def test_concurrent_requests_each_get_their_own_answer():
    async with FakeModelApi() as api:
        chat = _chat(api.url, timeout_s=2.0)
        results = await asyncio.gather(*(chat.infer(InferRequest("text", text=str(i)))
                                         for i in range(5)))
    assert sorted(r.outputs for r in results) == [f"echo: {i}" for i in range(5)]
