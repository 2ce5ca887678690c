"""Check the wire test vectors (``vectors.json``) against ``agent.compat`` and ``agent.wire``.

One script for both interpreters: CPython imports it from
``tests/wire/test_vectors_cpython.py``, and MicroPython (WebAssembly port,
under Node) runs it from ``tests/wire/test_vectors_micropython.py``. So it is
written in the portable subset: stdlib only (json, binascii, struct, sys), no
typing, no dataclasses, no f-strings, no pytest.

    python tests/wire/vector_check.py [vectors.json]

prints one line per failing vector, then ``wire vectors: N passed, M failed``;
the exit status is 1 if any vector failed.

Inputs may carry tags for what JSON cannot hold (see ``about`` in the file):
``{"$f64": hex}`` (an IEEE double, big-endian), ``{"$float": "nan"}``,
``{"$tuple": [...]}``, ``{"$pairs": [[k, v], ...]}``, ``{"$bytes": hex}``,
``{"$str_codepoints": [...]}``.
"""

# ruff: noqa: UP031 - %-formatting on purpose: the same text runs on MicroPython

import binascii
import json
import struct
import sys

SUMMARY = "wire vectors: %d passed, %d failed"


class VectorFailed(Exception):
    """A vector's outcome differs from what it expects."""


class _Lib:
    """The modules under test, imported when a run starts (so the script can fix sys.path)."""

    def __init__(self):
        from agent import compat, errors
        from agent.wire import envelope, hlc, replay, topics

        self.compat = compat
        self.errors = errors
        self.envelope = envelope
        self.hlc = hlc
        self.replay = replay
        self.topics = topics


# ---------------------------------------------------------------- helpers


def _unhex(text):
    return binascii.unhexlify(text)


def _hex(data):
    return binascii.hexlify(data).decode()


def _decode_input(value):
    """Turn the tagged JSON of a vector's input into the Python value it stands for."""
    if isinstance(value, list):
        return [_decode_input(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1:
            tag = next(iter(value))
            arg = value[tag]
            if tag == "$f64":
                return struct.unpack(">d", _unhex(arg))[0]
            if tag == "$float":
                return float(arg)
            if tag == "$tuple":
                return tuple(_decode_input(item) for item in arg)
            if tag == "$pairs":
                out = {}
                for pair in arg:
                    out[_decode_input(pair[0])] = _decode_input(pair[1])
                return out
            if tag == "$bytes":
                return _unhex(arg)
            if tag == "$str_codepoints":
                return "".join([chr(c) for c in arg])
        out = {}
        for key in value:
            out[key] = _decode_input(value[key])
        return out
    return value


def _show(value):
    text = repr(value)
    if len(text) > 160:
        text = text[:157] + "..."
    return text


def _describe(exc):
    name = type(exc).__name__
    reason = getattr(exc, "reason", None)
    if reason is not None:
        return "%s(%r): %s" % (name, reason, exc)
    return "%s: %s" % (name, exc)


def _equal(want, got, what):
    if want != got:
        raise VectorFailed("%s: want %s, got %s" % (what, _show(want), _show(got)))


def _error_class(lib, name):
    classes = {
        "ValueError": ValueError,
        "TopicInvalid": lib.errors.TopicInvalid,
        "EnvelopeRejected": lib.errors.EnvelopeRejected,
    }
    if name not in classes:
        raise VectorFailed("vector names an unknown error class %r" % name)
    return classes[name]


def _expect_error(lib, name, func, *args):
    cls = _error_class(lib, name)
    try:
        got = func(*args)
    except cls:
        return
    except Exception as exc:  # the wrong exception is a failure, not a crash
        raise VectorFailed("want %s, raised %s" % (name, _describe(exc))) from None
    raise VectorFailed("want %s, got %s" % (name, _show(got)))


def _outcome(lib, func, *args):
    """``"ok"`` if ``func`` returns, the reason if it raises ``EnvelopeRejected``."""
    try:
        func(*args)
    except lib.errors.EnvelopeRejected as exc:
        return exc.reason
    return "ok"


def _outcome_or_error(lib, v, func, *args):
    """Run ``func``; check an ``error`` class if the vector names one, else return the value."""
    if "error" in v:
        _expect_error(lib, v["error"], func, *args)
        return None
    return func(*args)


def _make_envelope(lib, fields):
    return lib.envelope.Envelope(
        fields["src"], fields["kind"], fields["body"], fields["ts"], id=fields["id"],
        sig=fields.get("sig"), mac=fields.get("mac"),
    )


def _toy_sign(lib):
    prefix = b"igris-toy-signer:"

    def sign(message):
        return lib.compat.sha256(prefix + message)

    def verify(message, signature):
        return lib.compat.digests_equal(signature, lib.compat.sha256(prefix + message))

    return sign, verify


# ---------------------------------------------------------------- one function per op


def _op_canonical_json(lib, v):
    # On CPython, canonical_json may use the C json encoder; the portable encoder (the one
    # MicroPython runs) is checked as well, so a divergence shows on either interpreter.
    for name in ("canonical_json", "canonical_json_portable"):
        encode = getattr(lib.compat, name, None)
        if encode is None:
            continue
        value = _decode_input(v["input"])
        try:
            got = _outcome_or_error(lib, v, encode, value)
            if "error" not in v:
                _equal(v["expect"].encode("utf-8"), got, "bytes")
        except VectorFailed as exc:
            raise VectorFailed("%s: %s" % (name, exc)) from None


def _op_b64url_encode(lib, v):
    _equal(v["expect"], lib.compat.b64url_encode(_unhex(v["hex"])), "base64url")


def _op_b64url_decode(lib, v):
    got = _outcome_or_error(lib, v, lib.compat.b64url_decode, _decode_input(v["input"]))
    if "error" not in v:
        _equal(v["expect_hex"], _hex(got), "decoded bytes")


def _op_sha256(lib, v):
    data = _unhex(v["repeat_hex"]) * v["times"] if "repeat_hex" in v else _unhex(v["hex"])
    _equal(v["expect_hex"], _hex(lib.compat.sha256(data)), "sha256")


def _op_hmac_sha256(lib, v):
    got = lib.compat.hmac_sha256(_unhex(v["key_hex"]), _unhex(v["data_hex"]))
    _equal(v["expect_hex"], _hex(got), "hmac_sha256")


def _op_digests_equal(lib, v):
    got = lib.compat.digests_equal(_unhex(v["a_hex"]), _unhex(v["b_hex"]))
    _equal(v["expect"], got, "digests_equal")


def _op_envelope_bytes(lib, v):
    env = _make_envelope(lib, v["envelope"])
    _equal(v["signing_bytes"].encode("utf-8"), env.signing_bytes(), "signing_bytes")
    _equal(v["encode"].encode("utf-8"), env.encode(), "encode")
    _equal(env.encode(), env.encode(), "encode twice")


def _op_mac_sign(lib, v):
    env = lib.envelope.mac_envelope(_make_envelope(lib, v["envelope"]), _unhex(v["key_hex"]))
    _equal(v["expect_mac"], env.mac, "mac")
    _equal(v["encode"].encode("utf-8"), env.encode(), "encode")


def _op_mac_verify(lib, v):
    env = lib.envelope.parse_envelope(v["wire"].encode("utf-8"))
    got = _outcome(lib, lib.envelope.verify_envelope_mac, env, _unhex(v["key_hex"]))
    _equal(v["expect"], got, "verify_envelope_mac")


def _receive_mac(lib, v):
    if "text_parts" in v:
        wire = "".join([part * times for part, times in v["text_parts"]])
    else:
        wire = v["wire"]
    env = lib.envelope.parse_envelope(wire.encode("utf-8"))
    lib.envelope.verify_envelope_mac(env, _unhex(v["key_hex"]))


def _op_receive_mac(lib, v):
    # Parse, then check the MAC, as a lite gateway does: a refusal at either step
    # counts. Ports may refuse at different steps (their json parsers differ on
    # non-canonical input), so a vector may allow more than one reason.
    got = _outcome(lib, _receive_mac, lib, v)
    if got not in v["expect_one_of"]:
        raise VectorFailed("received as %r, want one of %r" % (got, v["expect_one_of"]))


def _op_sig_sign(lib, v):
    sign, _verify = _toy_sign(lib)
    env = lib.envelope.sign_envelope(_make_envelope(lib, v["envelope"]), sign)
    _equal(v["expect_sig"], env.sig, "sig")
    _equal(v["encode"].encode("utf-8"), env.encode(), "encode")


def _op_sig_seal(lib, v):
    # The sender's one-pass path gives the bytes sign_envelope() gives.
    sign, verify = _toy_sign(lib)
    f = v["envelope"]
    env = lib.envelope.seal_envelope(f["src"], f["kind"], f["body"], f["ts"], f["id"], sign)
    _equal(v["expect_sig"], env.sig, "sig")
    _equal(v["signing_bytes"].encode("utf-8"), env.signing_bytes(), "signing_bytes")
    _equal(v["encode"].encode("utf-8"), env.encode(), "encode")
    _equal(lib.envelope.sign_envelope(_make_envelope(lib, f), sign).encode(), env.encode(),
           "sign_envelope's bytes")
    received = lib.envelope.parse_envelope(env.encode())
    _equal("ok", _outcome(lib, lib.envelope.verify_envelope, received, verify), "verify")


def _op_fresh_ids(lib, v):
    ids = lib.envelope.fresh_ids(v["batch"])
    got = [next(ids) for _ in range(v["count"])]
    for one in got:
        _equal(22, len(one), "length of an id")
        _equal(16, len(lib.compat.b64url_decode(one)), "bytes in an id")
    _equal(len(got), len(set(got)), "distinct ids")


def _op_sig_verify(lib, v):
    _sign, verify = _toy_sign(lib)
    env = lib.envelope.parse_envelope(v["wire"].encode("utf-8"))
    _equal(v["expect"], _outcome(lib, lib.envelope.verify_envelope, env, verify), "verify_envelope")


def _op_parse_envelope(lib, v):
    if "hex" in v:
        data = _unhex(v["hex"])
        if v.get("as_bytearray"):
            data = bytearray(data)
    elif "repeat" in v:
        data = (v["repeat"] * v["times"]).encode("utf-8")
    elif "text_parts" in v:  # [[text, times], ...] concatenated, as bytes
        data = "".join([part * times for part, times in v["text_parts"]]).encode("utf-8")
    else:
        data = v["text"]
    args = (data,)
    if "max_bytes" in v:
        args = (data, v["max_bytes"])
    try:
        env = lib.envelope.parse_envelope(*args)
    except lib.errors.EnvelopeRejected as exc:
        if "reason" not in v:
            raise VectorFailed("want a parsed envelope, rejected: %s" % _describe(exc)) from None
        _equal(v["reason"], exc.reason, "reason")
        return
    if "reason" in v:
        raise VectorFailed("want rejection %r, parsed %s" % (v["reason"], _show(env)))
    fields = v["expect"]["fields"]
    for name in ("v", "id", "src", "ts", "kind", "body", "sig", "mac"):
        _equal(fields[name], getattr(env, name), "field " + name)
    _equal(v["expect"]["reencode"].encode("utf-8"), env.encode(), "re-encoded bytes")


def _op_check_skew(lib, v):
    env = lib.envelope.Envelope("pi-01", "tele", {}, v["ts"], id="x")
    got = _outcome(lib, lib.envelope.check_skew, env, v["now"], v["window"])
    _equal(v["expect"], got, "check_skew")


def _op_constants(lib, v):
    env = lib.envelope
    if v["name"] == "REASONS":
        got = [env.OVERSIZE, env.NOT_JSON, env.NOT_ENVELOPE, env.BAD_VERSION, env.UNSIGNED,
               env.BAD_SIGNATURE, env.UNKNOWN_KEY, env.BLOCKED, env.EXPIRED, env.CLOCK_SKEW,
               env.REPLAY]
    else:
        got = getattr(env, v["name"])
    if isinstance(got, tuple):
        got = list(got)
    _equal(v["expect"], got, v["name"])


def _op_envelope_default_id(lib, v):
    first = lib.envelope.Envelope("pi-01", "tele", {}, [1, 0])
    second = lib.envelope.Envelope("pi-01", "tele", {}, [1, 0])
    _equal(22, len(first.id), "length of a default id")
    _equal(16, len(lib.compat.b64url_decode(first.id)), "bytes in a default id")
    if first.id == second.id:
        raise VectorFailed("two default ids are equal: %r" % first.id)


def _op_random_bytes(lib, v):
    a = lib.compat.random_bytes(32)
    b = lib.compat.random_bytes(32)
    _equal(32, len(a), "len(random_bytes(32))")
    _equal(True, isinstance(a, bytes), "random_bytes gives bytes")
    if a == b:
        raise VectorFailed("two random_bytes(32) are equal")
    _equal(b"", lib.compat.random_bytes(0), "random_bytes(0)")


def _op_clocks(lib, v):
    wall = lib.compat.wall_ms()
    if not 1600000000000 < wall < 5000000000000:
        raise VectorFailed("wall_ms() = %r is not a plausible epoch time in ms" % wall)
    a = lib.compat.monotonic_ms()
    b = lib.compat.monotonic_ms()
    if b < a:
        raise VectorFailed("monotonic_ms went backwards: %r then %r" % (a, b))
    ts = lib.hlc.HybridClock().now()
    if not (ts[0] >= wall and ts[1] >= 0):
        raise VectorFailed("HybridClock() with the default clock gave %r" % (ts,))


def _topics(lib, v):
    if "prefix" in v:
        return lib.topics.Topics(v["fleet"], v["prefix"])
    return lib.topics.Topics(v["fleet"])


def _op_topic_build(lib, v):
    t = _topics(lib, v)
    got = _outcome_or_error(lib, v, getattr(t, v["method"]), *v["args"])
    if "error" not in v:
        _equal(v["expect"], got, "topic")


def _op_topic_parse(lib, v):
    t = _topics(lib, v)
    got = _outcome_or_error(lib, v, t.parse, v["topic"])
    if "error" not in v:
        _equal(v["expect"]["name"], got.name, "name")
        _equal(v["expect"]["params"], got.params, "params")
        _equal(lib.topics.ParsedTopic(got.name, got.params), got, "ParsedTopic equality")


def _op_topic_filter(lib, v):
    _equal(v["expect"], _topics(lib, v).filter(*v["levels"]), "filter")


def _op_topics_init(lib, v):
    t = _outcome_or_error(lib, v, lib.topics.Topics, v["fleet"], v["prefix"])
    if "error" not in v:
        _equal(v["expect"], t.base, "base")


def _op_matches(lib, v):
    _equal(v["expect"], lib.topics.matches(v["filter"], v["topic"]), "matches")


def _op_check_name(lib, v):
    got = _outcome_or_error(lib, v, lib.topics.check_name, v["name"])
    if "error" not in v:
        _equal(v["name"], got, "check_name")


def _op_hlc(lib, v):
    box = [0]
    clock = lib.hlc.HybridClock(lambda: box[0])
    for i, step in enumerate(v["steps"]):
        box[0] = step[1]
        if step[0] == "now":
            got, want = clock.now(), step[2]
        else:
            got, want = clock.observe(step[2]), step[3]
        _equal(want, got, "step %d (%s at physical %d)" % (i, step[0], step[1]))


def _op_compare_ts(lib, v):
    _equal(v["expect"], lib.hlc.compare_ts(v["a"], v["b"]), "compare_ts")


def _op_replay(lib, v):
    guard = lib.replay.ReplayGuard(v["horizon"], v["capacity"])
    for i, step in enumerate(v["steps"]):
        if step[0] == "len":
            _equal(step[1], len(guard), "step %d: len" % i)
            continue
        got = _outcome(lib, guard.check, step[1], step[2], step[3])
        _equal(step[4], got, "step %d: check(%r, %r) at %d" % (i, step[1], step[2], step[3]))


_OPS = {
    "canonical_json": _op_canonical_json,
    "b64url_encode": _op_b64url_encode,
    "b64url_decode": _op_b64url_decode,
    "sha256": _op_sha256,
    "hmac_sha256": _op_hmac_sha256,
    "digests_equal": _op_digests_equal,
    "envelope_bytes": _op_envelope_bytes,
    "mac_sign": _op_mac_sign,
    "mac_verify": _op_mac_verify,
    "receive_mac": _op_receive_mac,
    "sig_sign": _op_sig_sign,
    "sig_seal": _op_sig_seal,
    "fresh_ids": _op_fresh_ids,
    "sig_verify": _op_sig_verify,
    "parse_envelope": _op_parse_envelope,
    "check_skew": _op_check_skew,
    "constants": _op_constants,
    "envelope_default_id": _op_envelope_default_id,
    "random_bytes": _op_random_bytes,
    "clocks": _op_clocks,
    "topic_build": _op_topic_build,
    "topic_parse": _op_topic_parse,
    "topic_filter": _op_topic_filter,
    "topics_init": _op_topics_init,
    "matches": _op_matches,
    "check_name": _op_check_name,
    "hlc": _op_hlc,
    "compare_ts": _op_compare_ts,
    "replay": _op_replay,
}


# ---------------------------------------------------------------- running


def load(vectors_path_or_text):
    """The parsed vector file, from a path or from the JSON text itself."""
    text = vectors_path_or_text
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not text.lstrip().startswith("{"):
        with open(text, "rb") as f:
            text = f.read().decode("utf-8")
    return json.loads(text)


def run(vectors_path_or_text):
    """Run every vector; return ``(passed, failed, failures)``, failures as lines of text."""
    lib = _Lib()
    vectors = load(vectors_path_or_text)["vectors"]
    passed = 0
    failures = []
    seen = {}
    for v in vectors:
        vid = v.get("id", "?")
        if vid in seen:
            failures.append("FAIL %s: duplicate vector id" % vid)
            continue
        seen[vid] = True
        op = _OPS.get(v.get("op"))
        try:
            if op is None:
                raise VectorFailed("unknown op %r" % v.get("op"))
            op(lib, v)
        except VectorFailed as exc:
            failures.append("FAIL %s: %s" % (vid, exc))
            continue
        except Exception as exc:  # one broken vector must not hide the others
            failures.append("FAIL %s: raised %s" % (vid, _describe(exc)))
            continue
        passed += 1
    return passed, len(failures), failures


def _default_path():
    here = __file__.replace("\\", "/")
    cut = here.rfind("/")
    return (here[:cut + 1] if cut >= 0 else "") + "vectors.json"


def main(argv=None):
    """Print failures and the summary line; return the number of failed vectors."""
    if argv is None:
        argv = sys.argv
    path = argv[1] if len(argv) > 1 else _default_path()
    passed, failed, failures = run(path)
    for line in failures:
        print(line)
    print(SUMMARY % (passed, failed))
    return failed


if __name__ == "__main__":
    try:
        import agent  # noqa: F401
    except ImportError:  # run as a script from a checkout: put the repository root on sys.path
        _root = _default_path().rsplit("/", 3)[0]
        sys.path.insert(0, _root or ".")
    sys.exit(1 if main() else 0)
