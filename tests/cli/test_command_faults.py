"""What spkemb promises under faults: one test per promise, on the code path a user hits.

The rule behind them all: a file at an output path is either the complete, correct result or the
user's untouched earlier file; bad input is one line and exit 2, failed work one line and exit 1.
Faults inside the training loop are tested with the trainer (test_trainer.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from spkemb.audio import audio_info, load_audio
from spkemb.cli.app import app
from spkemb.data.crops import CropDataset, SkippedAudioWarning
from spkemb.data.manifest import Utterance, read_manifest, write_manifest
from spkemb.embeddings.store import StoreWriter, partial_path, read_embeddings
from spkemb.errors import InputError, WorkError
from spkemb.utils.locking import lock_path

runner = CliRunner()
SR = 16000


def cli(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_lines(output: str) -> list[str]:
    assert "Traceback" not in output and "HDF5" not in output and "weights_only" not in output, output
    return [line for line in output.splitlines() if line.startswith("spkemb: error:")]


@pytest.fixture(scope="module")
def manifest(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m") / "manifest.tsv"
    assert cli("prepare", tiny_corpus, "-o", out).exit_code == 0
    return out


@pytest.fixture(scope="module")
def reference(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The MFCC-stats embeddings of ``manifest`` from one uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    assert cli("extract", "mfcc-stats", manifest, "-o", out).exit_code == 0
    return read_embeddings(out).vectors


# --- 1. a full disk during extract -------------------------------------------------------------


def _fail_on_call(real, n: int, exc: BaseException, counted=lambda *a: True):  # noqa: ANN001, ANN202
    calls = {"n": 0}

    def fake(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if counted(*args):
            calls["n"] += 1
            if calls["n"] == n:
                raise exc
        return real(*args, **kwargs)

    return fake


ENOSPC_H5 = RuntimeError(
    "Unable to synchronously flush file (file write failed: errno = 28, error message = 'No space left on device')"
)


@pytest.mark.parametrize(
    ("where", "call", "kept"),
    [
        ("flush", 6, 8),  # the 3rd batch's data flush fails: batches 1-2 (8 rows) were durable and marked
        ("flush", 5, 4),  # the 2nd batch's mark flush fails: its data is there but unmarked, so it is redone
        ("write", 3, 8),  # writing the 3rd batch's rows fails
    ],
)
def test_full_disk_during_extract_is_one_line_and_a_rerun_gives_the_right_store(
    manifest: Path,
    reference: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    call: int,
    kept: int,
) -> None:
    out = tmp_path / "emb.h5"
    args = ["extract", "mfcc-stats", manifest, "-o", out, "--max-batch", "4"]
    with monkeypatch.context() as m:
        m.setattr(StoreWriter, "FLUSH_SECONDS", 0.0)  # flush after every batch: the fault lands mid-run
        if where == "flush":
            m.setattr(h5py.File, "flush", _fail_on_call(h5py.File.flush, call, ENOSPC_H5))
        else:
            m.setattr(
                h5py.Dataset,
                "__setitem__",
                _fail_on_call(
                    h5py.Dataset.__setitem__,
                    call,
                    OSError(errno.ENOSPC, "No space left on device"),
                    counted=lambda d, *a: d.name == "/embedding",
                ),
            )
        res = cli(*args)
    assert res.exit_code == 1, res.output
    [line] = error_lines(res.output)
    assert "no space left" in line and str(partial_path(out)) in line
    assert not out.exists()  # never a store that looks complete
    with h5py.File(partial_path(out), "r") as f:
        marked = f["written"][()]
        assert marked.sum() == kept and np.isfinite(f["embedding"][()][marked]).all()
    res = cli(*args, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[-1])["resumed"] == kept
    np.testing.assert_allclose(read_embeddings(out).vectors, reference, rtol=1e-5, atol=1e-6)
    assert not lock_path(out).exists() and not partial_path(out).exists()


def test_a_row_is_marked_written_only_after_its_data_is_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops: list[str] = []
    real_set, real_flush = h5py.Dataset.__setitem__, h5py.File.flush

    def setitem(d, key, value):  # noqa: ANN001, ANN202
        ops.append(d.name.strip("/"))
        return real_set(d, key, value)

    def flush(f):  # noqa: ANN001, ANN202
        ops.append("flush")
        return real_flush(f)

    w = StoreWriter.open(tmp_path / "e.h5", ["a", "b", "c"], 2, {})
    monkeypatch.setattr(StoreWriter, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    monkeypatch.setattr(h5py.File, "flush", flush)
    w.write(np.array([2, 0]), np.ones((2, 2)))
    w.write(np.array([1]), np.ones((1, 2)))
    assert ops == ["embedding", "flush", "written", "flush"] * 2
    monkeypatch.undo()
    w.finish()


def test_a_store_is_never_complete_with_a_missing_or_non_finite_row(tmp_path: Path) -> None:
    out, ids = tmp_path / "e.h5", [f"u{i}" for i in range(6)]
    w = StoreWriter.open(out, ids, 3, {"checkpoint_sha256": "x"})
    with pytest.raises(ValueError, match="non-finite"):
        w.write(np.array([0]), np.full((1, 3), np.nan))
    w.write(np.arange(6), np.ones((6, 3)))
    w.close()
    with h5py.File(partial_path(out), "r+") as f:  # a row marked written whose data never reached the disk
        f["embedding"][2] = np.nan
    w = StoreWriter.open(out, ids, 3, {"checkpoint_sha256": "x"})
    assert w.resumed == 5 and list(np.flatnonzero(~w.done_mask())) == [2]  # ... is done again on resume
    with pytest.raises(WorkError, match="1 rows were never written"):
        w.finish()
    assert not out.exists()
    w = StoreWriter.open(out, ids, 3, {"checkpoint_sha256": "x"})
    w._emb[2] = np.nan  # noqa: SLF001  (bypass write's own check, as a bug would)
    w._written[2] = True  # noqa: SLF001
    with pytest.raises(WorkError, match="1 rows are not finite"):
        w.finish()
    assert not out.exists()


# --- 2. two writers on one output --------------------------------------------------------------


def _wait_for_lock(path: Path, pid: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(lock_path(path).read_text())["pid"] == pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    pytest.fail(f"the first process never held the lock ({proc.poll()=})")


def test_two_extracts_onto_one_output_one_is_refused_the_other_is_right(
    manifest: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "emb.h5"
    cmd = [sys.executable, "-m", "spkemb", "extract", "mfcc-stats", str(manifest), "-o", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(out, first.pid, first)
        os.kill(first.pid, signal.SIGSTOP)  # hold the first run mid-way, lock in hand
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        [line] = error_lines(second.stderr)
        assert str(out) in line and f"pid {first.pid}" in line
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
    np.testing.assert_allclose(read_embeddings(out).vectors, reference, rtol=1e-5, atol=1e-6)


def test_a_lock_held_elsewhere_refuses_augment_and_a_dead_holders_lock_is_taken_over(
    manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "aug"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom spkemb.utils.locking import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        args = ["augment", manifest, "-o", out, "--gain"]
        res = cli(*args)
        assert res.exit_code == 2
        [line] = error_lines(res.output)
        assert f"pid {holder.pid}" in line and "augment output folder" in line
        assert not out.exists()
        holder.kill()  # kill -9: the lock file stays behind, stale
        holder.wait()
        assert lock_path(out).exists()
        res = cli(*args)
        assert res.exit_code == 0, res.output
        assert len(read_manifest(out / "manifest.tsv")) == len(read_manifest(manifest))
        assert not lock_path(out).exists()
    finally:
        holder.kill()


# --- 3. an output onto an input ----------------------------------------------------------------


def test_outputs_onto_inputs_are_refused_before_any_work(manifest: Path, tmp_path: Path) -> None:
    from spkemb.models import build_encoder, save_encoder

    model = save_encoder(build_encoder("tdnn"), tmp_path / "exp" / "encoder.pt")
    shard = tmp_path / "s0.h5"
    assert cli("extract", "mfcc-stats", manifest, "-o", shard, "--shard", "0/1").exit_code == 0
    kaldi = tmp_path / "kaldi"
    assert cli("prepare", manifest, "--export-kaldi", kaldi).exit_code == 0
    audio = Path(read_manifest(manifest)[0].path)
    aug = tmp_path / "aug"
    aug.mkdir()
    aug_manifest = aug / "manifest.tsv"
    write_manifest(read_manifest(manifest), aug_manifest)  # (absolute audio paths)
    (tmp_path / "folder").mkdir()
    cases = [
        (["extract", model, manifest, "-o", model], model, "model"),
        (["extract", tmp_path / "exp", manifest, "-o", model], model, "model"),
        (["extract", "mfcc-stats", manifest, "-o", manifest], manifest, "manifest"),
        (["extract", "mfcc-stats", manifest, "-o", shard, "--merge", shard], shard, "--merge"),
        (["extract", "mfcc-stats", manifest, "-o", audio], audio, "audio"),
        (["extract", "mfcc-stats", manifest, "-o", tmp_path / "exp"], model, "existing folder"),
        (["prepare", manifest, "-o", manifest, "--trials", tmp_path / "t.txt"], manifest, "ROOT"),
        (["prepare", kaldi, "--export-kaldi", kaldi], kaldi / "wav.scp", "ROOT"),
        (["prepare", kaldi, "-o", kaldi], kaldi / "wav.scp", "ROOT"),
        (["prepare", kaldi, "--trials", tmp_path / "folder"], kaldi / "wav.scp", "existing folder"),
        (["augment", aug_manifest, "-o", aug, "--gain"], aug_manifest, "manifest"),
    ]
    for args, kept, words in cases:
        before = sha256(kept)
        res = cli(*args)
        assert res.exit_code == 2, (args, res.output)
        [line] = error_lines(res.output)
        assert words in line, (args, line)
        assert sha256(kept) == before, args
    assert not list((tmp_path / "exp").glob("*.partial")) and not (tmp_path / "t.txt").exists()
    assert sorted(p.name for p in aug.iterdir()) == ["manifest.tsv"]


# --- 4. poisoned audio -------------------------------------------------------------------------


POISONS = {
    "all-nan": np.full(SR, np.nan),
    "all-inf": np.full(SR, np.inf),
    "half-nan": np.concatenate([0.1 * np.sin(np.arange(SR // 2) / 5), np.full(SR // 2, np.nan)]),
}


@pytest.fixture()
def poisoned(tmp_path: Path) -> list[Utterance]:
    utts = []
    for name, x in POISONS.items():
        path = tmp_path / f"{name}.wav"
        sf.write(path, x.astype(np.float32), SR, subtype="FLOAT")  # float WAV can hold NaN and inf
        utts.append(Utterance(path.name, str(path), "x", 1.0, SR))
    return utts


def test_poisoned_audio_is_skipped_and_counted_by_extract(
    manifest: Path, poisoned: list[Utterance], tmp_path: Path
) -> None:
    good = read_manifest(manifest)[:4]
    write_manifest(good + poisoned, tmp_path / "m.tsv")
    res = cli("extract", "mfcc-stats", tmp_path / "m.tsv", "-o", tmp_path / "e.h5", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[-1])["failed"] == 3
    for name in POISONS:
        assert f"{name}.wav" in res.output
    emb = read_embeddings(tmp_path / "e.h5")
    assert emb.ids == [u.utt_id for u in good] and np.isfinite(emb.vectors).all() and emb.attrs["failed"] == 3


def test_poisoned_audio_is_skipped_by_training_crops(poisoned: list[Utterance]) -> None:
    ds = CropDataset(poisoned, SR, [(2, 0.25)])
    for i in range(len(poisoned)):
        with pytest.warns(SkippedAudioWarning, match="NaN or infinite"):
            assert ds[i] is None


def test_an_encoder_that_overflows_never_puts_a_non_finite_row_in_a_store(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spkemb.embeddings import extract as ex

    real = ex.embed_batch

    def overflowing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        emb = real(*args, **kwargs)
        emb[0] = np.inf
        return emb

    monkeypatch.setattr(ex, "embed_batch", overflowing)
    res = cli("extract", "mfcc-stats", manifest, "-o", tmp_path / "e.h5", "--max-batch", "8")
    assert res.exit_code == 0, res.output
    assert "non-finite embedding" in res.output
    emb = read_embeddings(tmp_path / "e.h5")
    assert len(emb) == len(read_manifest(manifest)) - 3 and np.isfinite(emb.vectors).all()


# --- 5. file names and OS errors ---------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_reported_and_skipped_by_prepare(tiny_corpus: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "spk").mkdir(parents=True)
    good = next(tiny_corpus.rglob("*.wav"))
    (root / "spk" / "ok.wav").write_bytes(good.read_bytes())
    try:
        with open(os.fsencode(root / "spk") + b"/caf\xe9.wav", "wb") as f:  # Latin-1 "café"
            f.write(good.read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    res = cli("prepare", root, "-o", tmp_path / "m.tsv")
    assert res.exit_code == 0, res.output
    assert "caf\\xe9.wav" in res.output and "not valid UTF-8" in res.output
    assert [u.utt_id for u in read_manifest(tmp_path / "m.tsv")] == ["spk/ok.wav"]


def test_missing_file_permission_and_link_loop_say_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spkemb.audio

    (tmp_path / "loop1.wav").symlink_to("loop2.wav")
    (tmp_path / "loop2.wav").symlink_to("loop1.wav")
    (tmp_path / "dangling.wav").symlink_to("nowhere.wav")
    (tmp_path / "folder.wav").mkdir()
    cases = {
        "missing.wav": "no such file",
        "loop1.wav": "symbolic link loop",
        "dangling.wav": "broken symbolic link",
        "folder.wav": "is a folder",
    }
    for name, words in cases.items():
        for read in (audio_info, load_audio):
            with pytest.raises(InputError, match=words):
                read(tmp_path / name)
    locked = tmp_path / "locked.wav"
    sf.write(locked, np.zeros(SR, dtype=np.float32), SR)
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the OS refuse as it would refuse a user

        def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise PermissionError(errno.EACCES, "Permission denied")

        def libsndfile_says(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("Error opening: System error.")

        monkeypatch.setattr(spkemb.audio.sf, "info", libsndfile_says)
        monkeypatch.setattr(spkemb.audio, "open", refuse, raising=False)
    with pytest.raises(InputError, match="permission denied"):
        audio_info(locked)


def test_os_errors_reach_the_extract_report(manifest: Path, tmp_path: Path) -> None:
    (tmp_path / "loop1.wav").symlink_to("loop2.wav")
    (tmp_path / "loop2.wav").symlink_to("loop1.wav")
    bad = [
        Utterance("gone", str(tmp_path / "gone.wav"), "x", 1.0, SR),
        Utterance("loop", str(tmp_path / "loop1.wav"), "x", 1.0, SR),
    ]
    write_manifest(read_manifest(manifest)[:2] + bad, tmp_path / "m.tsv")
    res = cli("extract", "mfcc-stats", tmp_path / "m.tsv", "-o", tmp_path / "e.h5")
    assert res.exit_code == 0, res.output
    assert "gone.wav: no such file" in res.output and "loop1.wav: symbolic link loop" in res.output
    assert "System error" not in res.output


# --- 6. messages -------------------------------------------------------------------------------


def test_random_bytes_or_a_malicious_encoder_file_is_one_line_and_never_runs(manifest: Path, tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "spkemb-encoder", "x": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("evil.pt", "random.pt"):
        res = cli("extract", tmp_path / name, manifest, "-o", tmp_path / "e.h5")
        assert res.exit_code == 2
        [line] = error_lines(res.output)
        assert "not a spkemb encoder" in line and name in line
    assert not marker.exists() and not (tmp_path / "e.h5").exists()


@pytest.mark.parametrize("duration", ["nan", "-1.5", "inf"])
def test_a_manifest_duration_that_is_nan_or_negative_is_refused(manifest: Path, tmp_path: Path, duration: str) -> None:
    lines = manifest.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[3] = duration
    (tmp_path / "m.tsv").write_text("\n".join([lines[0], "\t".join(fields), *lines[2:]]) + "\n")
    res = cli("extract", "mfcc-stats", tmp_path / "m.tsv", "-o", tmp_path / "e.h5")
    assert res.exit_code == 2
    [line] = error_lines(res.output)
    assert "line 2: duration" in line
    assert not (tmp_path / "e.h5").exists()


def test_a_trial_list_with_a_utf8_bom_is_accepted(manifest: Path, tmp_path: Path) -> None:
    ids = [u.utt_id for u in read_manifest(manifest)]
    store = tmp_path / "e.h5"
    assert cli("extract", "mfcc-stats", manifest, "-o", store).exit_code == 0
    text = f"1 {ids[0]} {ids[1]}\r\n0 {ids[0]} {ids[-1]}\r\n"
    (tmp_path / "plain.txt").write_text(text)
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    plain, bom = cli("score", tmp_path / "plain.txt", store), cli("score", tmp_path / "bom.txt", store)
    assert bom.exit_code == 0, bom.output
    assert bom.stdout == plain.stdout and len(bom.stdout.splitlines()) == 2


def test_output_names_near_the_255_byte_limit_work_and_resume(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / ("e" * 248 + ".h5")  # 251 bytes: OUT.partial, .OUT.lock and .OUT.xxx.tmp would not fit
    part = partial_path(out)
    assert len(part.name) <= 255 and part == partial_path(out) and part.parent == out.parent
    w = StoreWriter.open(out, ["a", "b"], 2, {"checkpoint_sha256": "x"})
    w.write(np.array([0]), np.ones((1, 2)))
    w.close()  # interrupted: the short-named partial is found again
    w = StoreWriter.open(out, ["a", "b"], 2, {"checkpoint_sha256": "x"})
    assert w.resumed == 1
    w.write(np.array([1]), np.ones((1, 2)))
    w.finish()
    long_out = tmp_path / ("f" * 247 + ".h5")  # its export f...f.ids.txt is 255 bytes
    res = cli("extract", "mfcc-stats", manifest, "-o", long_out, "--export", "npy")
    assert res.exit_code == 0, res.output
    assert len(read_embeddings(long_out)) == len(read_manifest(manifest))
    long_manifest = tmp_path / ("m" * 251 + ".tsv")
    assert cli("prepare", manifest, "-o", long_manifest).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, long_out.name, long_out.with_suffix(".npy").name, "f" * 247 + ".ids.txt", long_manifest.name]
    )


def test_prepare_verify_decodes_every_file_and_leaves_out_truncated_or_poisoned_ones(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "spk").mkdir(parents=True)
    x = 0.1 * np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32)
    sf.write(root / "spk" / "good.flac", x, SR)
    data = (root / "spk" / "good.flac").read_bytes()
    (root / "spk" / "cut.flac").write_bytes(data[: len(data) // 3])  # the header still says 3 s
    sf.write(root / "spk" / "nan.wav", np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    res = cli("prepare", root, "-o", tmp_path / "fast.tsv")
    assert res.exit_code == 0
    fast = {u.utt_id: u.duration for u in read_manifest(tmp_path / "fast.tsv")}
    assert fast["spk/cut.flac"] == pytest.approx(3.0)  # headers only: the default, fast, and blind to this
    res = cli("prepare", root, "-o", tmp_path / "verified.tsv", "--verify")
    assert res.exit_code == 0, res.output
    assert [u.utt_id for u in read_manifest(tmp_path / "verified.tsv")] == ["spk/good.flac"]
    assert "cut.flac: cannot decode audio" in res.output and "nan.wav: bad audio" in res.output
