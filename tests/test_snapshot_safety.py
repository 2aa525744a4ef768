"""Untrusted pickles: anything that names a class or callable is refused and nothing runs;
broken files get one line naming the file."""

from __future__ import annotations

import collections
import os
import pickle

import pytest

from lmreport import safe_pickle
from lmreport.cli import main
from lmreport.errors import InputFileError
from lmreport.ingest.snapshot_synthetic import synthetic_snapshot


class _WouldTouch:
    """Unpickling this with plain pickle runs os.system("touch <path>")."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


class _CallsOpen:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # builtins.open(path, "w") would create the file
        return open, (self.path, "w")


def _payload(obj) -> bytes:
    return pickle.dumps({"segments": [], "device_traces": [[]], "x": obj})


@pytest.mark.parametrize("make", [_WouldTouch, _CallsOpen])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, make):
    marker = tmp_path / "pwned"
    bad = tmp_path / "snapshot.pickle"
    bad.write_bytes(_payload(make(marker)))
    with pytest.raises(InputFileError) as e:
        safe_pickle.load(bad)
    assert not marker.exists()  # the payload did not run
    assert str(bad) in str(e.value) and "refused" in str(e.value)
    assert "system" in str(e.value) or "open" in str(e.value)
    # the same file through plain pickle would have run it: proof the test payload is real
    pickle.loads(bad.read_bytes())
    assert marker.exists()


def test_any_class_is_refused_even_harmless_ones(tmp_path):
    f = tmp_path / "ordered.pickle"
    f.write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(InputFileError, match="collections.OrderedDict"):
        safe_pickle.load(f)


def test_builtin_containers_and_scalars_load(tmp_path):
    obj = {"a": [1, 2.5, None, True, "s", (3, 4)], "b": {"c": -(2**70)}}
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert safe_pickle.loads(pickle.dumps(obj, protocol=proto)) == obj


def test_truncated_pickle_is_one_clear_error(tmp_path):
    obj, _ = synthetic_snapshot(events=200)
    data = pickle.dumps(obj)
    f = tmp_path / "cut.pickle"
    for cut in (len(data) // 2, len(data) - 1, 3):
        f.write_bytes(data[:cut])
        with pytest.raises(InputFileError, match="truncated") as e:
            safe_pickle.load(f)
        assert str(f) in str(e.value)


def test_not_a_pickle_and_not_a_snapshot(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a pickle\n")
    other = tmp_path / "other.pickle"
    other.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    number = tmp_path / "number.pickle"
    number.write_bytes(pickle.dumps(42))
    missing = tmp_path / "missing.pickle"
    for path, expected in ((text, "not a readable pickle"), (other, "not a CUDA memory snapshot"),
                           (number, "not a CUDA memory snapshot"), (missing, "cannot open")):
        code = main(["inspect", "snapshot", str(path)])
        out, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and str(path) in err and expected in err, err
        assert "Traceback" not in err


def test_cli_refuses_malicious_file_with_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pickle"
    bad.write_bytes(_payload(_WouldTouch(marker)))
    assert main(["inspect", "snapshot", "--json", str(bad)]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "refused" in err and not marker.exists()


def test_malformed_trace_entry_names_the_file(tmp_path, capsys):
    obj, _ = synthetic_snapshot(events=50)
    del obj["device_traces"][0][10]["size"]
    obj["device_traces"][0][10]["action"] = "alloc"
    f = tmp_path / "broken.pickle"
    f.write_bytes(pickle.dumps(obj))
    assert main(["inspect", "snapshot", str(f)]) == 2
    _, err = capsys.readouterr()
    assert str(f) in err and "trace entry 10" in err


def _mangled(edit):
    obj, _ = synthetic_snapshot(events=120, seed=9)
    edit(obj)
    return obj


def _deep_frame_pickle() -> bytes:
    """A frame whose filename is a list nested 300,000 deep (built from opcodes: pickle.dumps would recurse)."""
    obj, _ = synthetic_snapshot(events=120, seed=9)
    obj["device_traces"][0][1]["frames"] = [{"filename": "DEEPDEEP", "line": 1, "name": "x"}]
    data = pickle.dumps(obj, protocol=2)
    key = b"X\x08\x00\x00\x00DEEPDEEP"  # BINUNICODE of the placeholder
    assert key in data
    n = 300_000
    return data.replace(key, b"]" * n + b"a" * (n - 1))  # EMPTY_LIST n times, then APPEND each into the previous


def _repeated_segments(obj):
    seg = obj["segments"][0]
    seg["blocks"] = [dict(seg["blocks"][0]) for _ in range(100)]
    obj["segments"] = [seg] * 100  # 100 references to one object: the memo makes this cheap to write


MALFORMED = {
    "block without size": (lambda o: o["segments"][0]["blocks"][0].pop("size"), "segment 0, block 0"),
    "block not a dict": (lambda o: o["segments"][0]["blocks"].__setitem__(0, "x"), "segment 0, block 0"),
    "device a string": (lambda o: o["segments"][0].__setitem__("device", "gpu"), "'device'"),
    "negative device": (lambda o: o["segments"][0].__setitem__("device", -1), "'device'"),
    "total_size a string": (lambda o: o["segments"][0].__setitem__("total_size", "big"), "'total_size'"),
    "legacy history not records": (lambda o: o["segments"][0]["blocks"][0].__setitem__("history", "x"), "'history'"),
    "size beyond int64": (lambda o: o["device_traces"][0][5].__setitem__("size", 2**70), "trace entry 5"),
    "action a list": (lambda o: o["device_traces"][0][5].__setitem__("action", [1]), "trace entry 5"),
    "entry a string": (lambda o: o["device_traces"][0].__setitem__(5, "x"), "trace entry 5"),
    "one segment repeated": (_repeated_segments, "repeats an earlier segment"),
    "one trace for two devices": (lambda o: o["device_traces"].append(o["device_traces"][0]), "repeats the trace"),
}


@pytest.mark.parametrize("edit,expected", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_snapshots_are_one_line_naming_the_file(tmp_path, capsys, edit, expected):
    f = tmp_path / "mangled.pickle"
    f.write_bytes(pickle.dumps(_mangled(edit)))
    assert main(["inspect", "snapshot", "--json", str(f)]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"lmreport: error: {f}: ") and expected in err, err


def test_odd_but_harmless_fields_are_tolerated(tmp_path, capsys):
    """Bad annotations only lose their phase; frames of the wrong shape only lose their source."""
    def edit(o):
        o["external_annotations"] = [{"stage": "START", "name": "a", "time_us": "x"},
                                     {"stage": "END", "name": "a", "time_us": 5, "device": "x"}]
        o["device_traces"][0][1]["frames"] = "not a list"
        o["device_traces"][0][2]["frames"] = [{"filename": [1], "line": "x", "name": None}]
    f = tmp_path / "odd.pickle"
    f.write_bytes(pickle.dumps(_mangled(edit)))
    assert main(["inspect", "snapshot", "--json", str(f)]) == 0
    deep = tmp_path / "deep.pickle"
    deep.write_bytes(_deep_frame_pickle())
    assert main(["inspect", "snapshot", "--json", str(deep)]) == 0  # the nested "filename" is skipped, not printed
    capsys.readouterr()


@pytest.mark.parametrize("data", [
    b"cos\nsystem\n(S'true'\ntR.",  # protocol 0: GLOBAL, REDUCE
    b"(S'true'\nios\nsystem\n.",  # protocol 0: INST
    b"\x80\x02(cos\nsystem\nS'true'\no.",  # protocol 1+: OBJ
    b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R.",  # protocol 4: STACK_GLOBAL
], ids=["GLOBAL", "INST", "OBJ", "STACK_GLOBAL"])
def test_every_opcode_that_names_a_global_is_refused(data):
    with pytest.raises(InputFileError, match="refused: the pickle names the global os.system"):
        safe_pickle.loads(data)


def test_extension_codes_cannot_bypass_find_class(capsys):
    """EXT1 resolves through copyreg's process-wide cache before find_class: a plain unpickling
    elsewhere in the process must not leave a callable there for the restricted one."""
    import copyreg
    code = 0x7E
    copyreg.add_extension("builtins", "print", code)
    try:
        data = b"\x80\x02\x82" + bytes([code]) + b"X\x06\x00\x00\x00leaked\x85R."  # EXT1; ('leaked',); REDUCE
        pickle.loads(data)  # fills copyreg._extension_cache with builtins.print
        assert capsys.readouterr().out == "leaked\n"
        with pytest.raises(InputFileError, match="builtins.print"):
            safe_pickle.loads(data)
        assert capsys.readouterr().out == ""  # print did not run
    finally:
        copyreg.remove_extension("builtins", "print", code)
