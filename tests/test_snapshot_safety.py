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
