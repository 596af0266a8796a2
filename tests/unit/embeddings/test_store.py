from pathlib import Path

import h5py
import numpy as np
import pytest

from spkemb.embeddings.export import export_embeddings
from spkemb.embeddings.store import (
    StoreWriter,
    merge_stores,
    partial_path,
    read_embeddings,
    write_embeddings,
)
from spkemb.errors import InputError, WorkError

IDS = [f"spk{i // 3}/u{i}.wav" for i in range(9)]


def test_round_trip_and_attributes(tmp_path: Path) -> None:
    v = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
    attrs = {"encoder": "x", "encoder_config": {"c": 1}}
    write_embeddings(tmp_path / "e.h5", IDS, v, [i.split("/")[0] for i in IDS], attrs)
    e = read_embeddings(tmp_path / "e.h5")
    assert e.ids == IDS and np.array_equal(e.vectors, v) and e.speakers[3] == "spk1"
    assert e.attrs["encoder_config"] == {"c": 1} and e.attrs["complete"]
    assert not partial_path(tmp_path / "e.h5").exists()


def test_interrupted_writer_resumes_and_never_looks_complete(tmp_path: Path) -> None:
    out = tmp_path / "e.h5"
    v = np.arange(36, dtype=np.float32).reshape(9, 4)
    w = StoreWriter.open(out, IDS, 4, {"checkpoint_sha256": "abc", "options": {"chunk": None}})
    w.write(np.array([0, 1, 2]), v[:3])
    w.close()  # "killed" here
    assert not out.exists()
    with pytest.raises(InputError, match="unfinished"):
        read_embeddings(out)
    w = StoreWriter.open(out, IDS, 4, {"checkpoint_sha256": "abc", "options": {"chunk": None}})
    assert w.resumed == 3 and list(np.flatnonzero(~w.done_mask())) == list(range(3, 9))
    w.write(np.array([8, 3, 5, 4, 6, 7]), v[[8, 3, 5, 4, 6, 7]])
    w.finish()
    assert np.array_equal(read_embeddings(out).vectors, v)


def test_changed_encoder_starts_afresh(tmp_path: Path) -> None:
    out = tmp_path / "e.h5"
    w = StoreWriter.open(out, IDS, 4, {"checkpoint_sha256": "abc"})
    w.write(np.array([0]), np.ones((1, 4)))
    w.close()
    w = StoreWriter.open(out, IDS, 4, {"checkpoint_sha256": "def"})
    assert w.resumed == 0
    w.close()


def test_unfinished_rows_refuse_to_finish(tmp_path: Path) -> None:
    w = StoreWriter.open(tmp_path / "e.h5", IDS, 4, {})
    w.write(np.array([0]), np.ones((1, 4)))
    with pytest.raises(WorkError, match="never written"):
        w.finish()
    assert not (tmp_path / "e.h5").exists()


def test_foreign_or_incomplete_file_is_input_error(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = 1
    with pytest.raises(InputError, match="not a spkemb"):
        read_embeddings(tmp_path / "x.h5")
    (tmp_path / "y.h5").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read"):
        read_embeddings(tmp_path / "y.h5")


def test_merge_in_manifest_order(tmp_path: Path) -> None:
    v = np.random.default_rng(1).standard_normal((9, 4)).astype(np.float32)
    write_embeddings(tmp_path / "a.h5", IDS[5:], v[5:], attrs={"checkpoint_sha256": "s"})
    write_embeddings(tmp_path / "b.h5", IDS[:5], v[:5], attrs={"checkpoint_sha256": "s"})
    merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5", order=IDS)
    m = read_embeddings(tmp_path / "m.h5")
    assert m.ids == IDS and np.array_equal(m.vectors, v)
    with pytest.raises(InputError, match="do not cover"):
        merge_stores([tmp_path / "a.h5"], tmp_path / "m2.h5", order=IDS)
    write_embeddings(tmp_path / "c.h5", IDS[:5], v[:5], attrs={"checkpoint_sha256": "other"})
    with pytest.raises(InputError, match="different encoder"):
        merge_stores([tmp_path / "a.h5", tmp_path / "c.h5"], tmp_path / "m3.h5")


def test_exports(tmp_path: Path) -> None:
    v = np.random.default_rng(2).standard_normal((9, 3)).astype(np.float32)
    p = write_embeddings(tmp_path / "e.h5", IDS, v)
    e = read_embeddings(p)
    npy, ids = export_embeddings(e, p, "npy")
    assert np.array_equal(np.load(npy), v) and ids.read_text().split() == IDS
    ark, scp = export_embeddings(e, p, "kaldi")
    # binary Kaldi vectors (what copy-vector reads): each scp offset points just past 'KEY ' at '\0B'.
    data = ark.read_bytes()
    assert data.startswith(IDS[0].encode() + b" \0BFV ")
    import kaldiio

    back = dict(kaldiio.load_scp(str(scp)))
    assert list(back) == IDS
    np.testing.assert_array_equal(np.asarray(back[IDS[4]]), v[4])
    for line in scp.read_text().splitlines():
        off = int(line.rsplit(":", 1)[1])
        assert data[off : off + 2] == b"\0B"


def test_merge_checks_before_writing(tmp_path: Path) -> None:
    v = np.ones((9, 4), dtype=np.float32)
    write_embeddings(tmp_path / "a.h5", IDS, v, attrs={"checkpoint_sha256": "s"})
    out = tmp_path / "out.h5"
    out.write_bytes(b"earlier output")
    with pytest.raises(InputError, match="another encoder"):
        merge_stores([tmp_path / "a.h5"], out, order=IDS, expect_sha256="other")
    assert out.read_bytes() == b"earlier output"


def test_merge_allows_ids_a_shard_could_not_read(tmp_path: Path) -> None:
    v = np.ones((9, 4), dtype=np.float32)
    write_embeddings(tmp_path / "a.h5", IDS[:4], v[:4], attrs={"checkpoint_sha256": "s", "failed": 1})
    write_embeddings(tmp_path / "b.h5", IDS[5:], v[5:], attrs={"checkpoint_sha256": "s"})
    m = read_embeddings(merge_stores([tmp_path / "b.h5", tmp_path / "a.h5"], tmp_path / "m.h5", order=IDS))
    assert m.ids == IDS[:4] + IDS[5:] and m.attrs["failed"] == 1
