"""`spkemb export-model`: an encoder file as an ONNX graph (waveforms in, embeddings out)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from spkemb.cli.console import console, print_json
from spkemb.cli.errors import guarded
from spkemb.errors import InputError


@guarded
def export_model(
    model: str = typer.Argument(..., metavar="MODEL", help="Encoder file (encoder.pt) or experiment folder."),
    onnx: Path = typer.Option(..., "--onnx", metavar="MODEL.onnx", help="ONNX file to write."),
    opset: int = typer.Option(17, metavar="N", help="ONNX opset version."),
    threads: int | None = typer.Option(None, metavar="N", help="Threads for the check run. [default: one per core]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing MODEL.onnx."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Export an encoder to ONNX, its front-end included: waveforms in, embeddings out.

    Inputs: waveform, float32 (batch, samples): mono audio at the encoder's sample rate (16 kHz for
    the built-in encoders), samples in [-1, 1], shorter rows zero-padded; lengths, int64 (batch,):
    the valid samples of each row. Output: embedding, float32 (batch, embed_dim), not
    length-normalised (the torch encoder's output). batch and samples are dynamic. The features
    (the encoder's own Fbank or MFCC: e.g. 80 log-mel bins, 25 ms windows every 10 ms, per-utterance
    mean normalisation for ecapa) are computed inside the graph exactly as in torch, so no front-end
    has to be rewritten next to the model. The file's metadata (metadata_props) hold the encoder
    config (JSON), sample_rate, embed_dim, source_sha256 and opset. spkemb extract MODEL.onnx
    MANIFEST -o EMB.h5 runs it through onnxruntime (fp32 on the CPU; --precision bf16 is refused).

    After writing, the graph is run in onnxruntime on a batch of other lengths and compared with
    torch: below cosine 0.9999 the export fails and nothing is left at MODEL.onnx (the file is
    written to a temporary name and renamed only once checked). Needs onnx and onnxruntime
    (pip install 'spkemb[onnx]').
    """
    from spkemb.models.onnx_export import require_onnx

    require_onnx("onnx", "onnxruntime")
    if onnx.exists() and not overwrite:
        raise InputError("already exists; --overwrite replaces it", onnx)
    if opset < 14:
        raise InputError(f"--opset {opset}: must be at least 14")
    from spkemb.models.io import load_encoder
    from spkemb.models.onnx_export import export_onnx
    from spkemb.utils.encoder_files import encoder_checksum
    from spkemb.utils.runtime import set_threads

    set_threads(threads)
    encoder = load_encoder(model)
    if getattr(encoder, "source", None) is None:
        raise InputError("a built-in baseline has no weights to export; give an encoder file", model)
    done = export_onnx(encoder, onnx, encoder_checksum(model), opset, threads)
    console.print(
        f"wrote {escape(str(done.path))} (opset {done.opset}); onnxruntime vs torch on a {done.check_shape[0]}-row "
        f"check batch: min cosine {done.min_cosine:.6f}, max difference {done.max_abs_diff:.2g}",
        highlight=False,
        soft_wrap=True,
    )
    if json_out:
        print_json(
            {
                "output": str(done.path),
                "opset": done.opset,
                "min_cosine": done.min_cosine,
                "max_abs_diff": done.max_abs_diff,
            }
        )
