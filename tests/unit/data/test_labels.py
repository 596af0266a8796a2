"""Label files (`utt_id label` lines): the reader that `finetune --labels` uses, and the writer of `cluster`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from spkemb.data.labels import format_labels, read_labels, write_labels
from spkemb.errors import InputError


def test_round_trip_keeps_order(tmp_path: Path) -> None:
    ids = ["spk1/a/00001.wav", "spk0/b/00002.wav", "spk1/a/00003.wav"]
    names = ["spk00001", "spk00000", "spk00001"]
    path = write_labels(tmp_path / "sub" / "labels.tsv", ids, names)
    assert path.read_text() == "spk1/a/00001.wav spk00001\nspk0/b/00002.wav spk00000\nspk1/a/00003.wav spk00001\n"
    assert read_labels(path) == dict(zip(ids, names, strict=True))
    assert list(read_labels(path)) == ids


def test_blank_lines_comments_tabs_and_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "# pseudo-labels, round 1\n\nu1\tA\n  u2   B  \n"
    path = tmp_path / "l.txt"
    path.write_text(text)
    assert read_labels(path) == {"u1": "A", "u2": "B"}
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert read_labels("-") == {"u1": "A", "u2": "B"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("u1 A\nu2 B extra\n", ["line 2", "expected 'utt_id label'", "3 fields"]),
        ("u1 A\nu2\n", ["line 2", "1 fields"]),
        ("utt_id\tpath\tspeaker\nu1\t/x.wav\tA\n", ["line 1", "3 fields"]),  # a manifest is not a label file
        ("u1 A\nu2 B\nu1 C\n", ["line 3", "'u1' appears again", "first on line 1"]),
        ("\n# nothing\n", ["no 'utt_id label' lines"]),
    ],
)
def test_malformed_files_are_one_clear_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "labels.tsv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_labels(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for part in expected:
        assert part in message


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such label file"):
        read_labels(tmp_path / "nope.tsv")
    binary = tmp_path / "labels.h5"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(InputError, match="not a text label file"):
        read_labels(binary)


def test_writer_refuses_what_the_reader_could_not_read_back(tmp_path: Path) -> None:
    out = tmp_path / "labels.tsv"
    out.write_text("precious\n")
    for ids, names in ((["a b.wav"], ["spk0"]), (["a.wav"], [""]), (["a.wav"], ["x y"])):
        with pytest.raises(InputError, match="whitespace"):
            write_labels(out, ids, names)
    assert out.read_text() == "precious\n"
    with pytest.raises(ValueError):
        format_labels(["a", "b"], ["x"])
