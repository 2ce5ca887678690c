"""``igris mem put|get|rm|ls``: the real commands on a real root, no agent running."""

import io
import json
import sqlite3
import time

import pytest

from agent.cli import main
from agent.identity import FleetCa, enroll


@pytest.fixture
def root(tmp_path):
    ca = FleetCa.init(tmp_path / "ca", "lab")
    enroll(tmp_path / "root", ca, "pi-01", now_ms=int(time.time() * 1000), days=10)
    return tmp_path / "root"


@pytest.fixture
def igris(root, capsys):
    """Run ``igris ARGS --root ROOT``; returns (exit status, stdout, stderr)."""

    def run(*argv):
        code = main([*argv, "--root", str(root)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_put_get_rm_round_trip(igris):
    code, out, _ = igris("mem", "put", "notes", "kitchen/temp", '{"c": 21.5, "ok": true}')
    assert code == 0 and "kitchen/temp" in out and "version" in out
    code, out, _ = igris("mem", "get", "notes", "kitchen/temp")
    assert code == 0 and json.loads(out) == {"c": 21.5, "ok": True}
    code, out, _ = igris("mem", "put", "notes", "kitchen/temp", "[1, 2]", "--json")
    assert json.loads(out)["version"] == 2
    code, out, _ = igris("mem", "get", "notes", "kitchen/temp", "--json")
    doc = json.loads(out)
    assert (doc["pool"], doc["key"], doc["version"], doc["value"]) == (
        "notes", "kitchen/temp", 2, [1, 2])
    code, out, _ = igris("mem", "rm", "notes", "kitchen/temp", "--json")
    assert code == 0 and json.loads(out)["deleted"] is True
    code, _, err = igris("mem", "get", "notes", "kitchen/temp")
    assert code == 1 and "no document 'kitchen/temp' in pool 'notes'" in err
    code, _, err = igris("mem", "rm", "notes", "kitchen/temp")
    assert code == 1 and "to delete" in err


@pytest.mark.parametrize("arg, value", [
    ("42", 42), ("true", True), ("null", None), ('"quoted"', "quoted"),
    ("hello world", "hello world"), ("NaN", "NaN"),
])
def test_value_is_json_or_else_text(igris, arg, value):
    assert igris("mem", "put", "p", "k", arg)[0] == 0
    assert json.loads(igris("mem", "get", "p", "k", "--json")[1])["value"] == value


def test_value_from_a_file(igris, tmp_path):
    (tmp_path / "v.json").write_text('{"from": "file"}\n')
    assert igris("mem", "put", "p", "k", f"@{tmp_path / 'v.json'}")[0] == 0
    assert json.loads(igris("mem", "get", "p", "k")[1]) == {"from": "file"}


def test_text_comes_back_as_text(igris):
    igris("mem", "put", "p", "k", "two\nlines")
    assert igris("mem", "get", "p", "k")[1] == "two\nlines\n"


def test_value_from_stdin(igris, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO('{"from": "stdin"}'))
    assert igris("mem", "put", "p", "k", "@-")[0] == 0
    assert json.loads(igris("mem", "get", "p", "k")[1]) == {"from": "stdin"}


def test_values_that_are_not_json_are_clear_errors(igris, tmp_path):
    code, _, err = igris("mem", "put", "p", "k", '{"a": 1,}')
    assert code == 1 and "looks like JSON but does not parse" in err
    (tmp_path / "bad.json").write_text("not json")
    code, _, err = igris("mem", "put", "p", "k", f"@{tmp_path / 'bad.json'}")
    assert code == 1 and "does not hold JSON" in err and "bad.json" in err
    code, _, err = igris("mem", "put", "p", "k", f"@{tmp_path / 'missing.json'}")
    assert code == 1 and "cannot read the value" in err
    code, _, err = igris("mem", "put", "p", "k", "x" * 40_000)
    assert code == 1 and "over the 32768-byte limit" in err
    assert "Traceback" not in err


def test_ttl(igris, capsys):
    before = int(time.time() * 1000)
    code, out, _ = igris("mem", "put", "p", "k", "1", "--ttl", "2h", "--json")
    assert code == 0
    expires = json.loads(out)["expires_ms"]
    assert before + 7_200_000 <= expires <= int(time.time() * 1000) + 7_200_000
    out = igris("mem", "put", "p", "k", "1", "--ttl", "90", "--json")[1]
    assert json.loads(out)["expires_ms"] <= int(time.time() * 1000) + 90_000
    with pytest.raises(SystemExit):
        igris("mem", "put", "p", "k", "1", "--ttl", "soon")
    assert "is not a duration" in capsys.readouterr().err


def test_ls_lists_pools_and_documents(igris):
    code, out, _ = igris("mem", "ls")
    assert code == 0 and "(no pools)" in out
    for key in ("kitchen/temp", "kitchen/hum", "hall/temp"):
        igris("mem", "put", "sensors", key, f'{{"where": "{key}"}}')
    igris("mem", "put", "notes", "todo", "buy milk")
    code, out, _ = igris("mem", "ls")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["POOL", "DOCUMENTS", "EXPIRED"]
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["notes", "1"],
                                                                   ["sensors", "3"]]
    code, out, _ = igris("mem", "ls", "--json")
    assert [p["documents"] for p in json.loads(out)] == [1, 3]
    code, out, _ = igris("mem", "ls", "sensors", "--prefix", "kitchen/")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["kitchen/hum", "kitchen/temp"]
    code, out, _ = igris("mem", "ls", "sensors", "--json", "--limit", "1", "--after", "hall/temp")
    listing = json.loads(out)
    assert [d["key"] for d in listing["documents"]] == ["kitchen/hum"]
    assert listing["problems"] == []
    code, out, _ = igris("mem", "ls", "sensors", "--prefix", "nothing")
    assert code == 0 and "(no documents)" in out


def test_unknown_pool_is_named_with_a_suggestion(igris):
    igris("mem", "put", "sensors", "k", "1")
    for argv in (("get", "sensor", "k"), ("rm", "sensor", "k"), ("ls", "sensor")):
        code, _, err = igris("mem", *argv)
        assert code == 1
        assert "no memory pool 'sensor'" in err and "did you mean 'sensors'" in err


def test_a_tampered_row_is_reported_never_printed(igris, root):
    igris("mem", "put", "vault", "a", '{"pin": "1234"}')
    igris("mem", "put", "vault", "b", '{"pin": "5678"}')
    conn = sqlite3.connect(root / "igris.db")
    conn.execute("UPDATE documents SET version = 9 WHERE key = 'a'")
    conn.commit()
    conn.close()
    code, out, err = igris("mem", "get", "vault", "a")
    assert code == 1 and out == ""
    assert "pool 'vault' key 'a' was tampered with" in err and "1234" not in err
    code, out, err = igris("mem", "ls", "vault", "--json")
    assert code == 1
    listing = json.loads(out)
    assert [d["key"] for d in listing["documents"]] == ["b"]
    assert [p["key"] for p in listing["problems"]] == ["a"]
    assert "1234" not in out + err and "key 'a' was tampered with" in err


def test_a_root_that_is_not_enrolled_is_one_clear_line(tmp_path, capsys):
    code = main(["mem", "ls", "--root", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("igris: error:") and "igris enroll" in err
