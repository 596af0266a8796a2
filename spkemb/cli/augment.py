"""`spkemb augment`: write augmented copies of a manifest's audio, a new manifest and a record.

The job (outputs, resume, workers, records) is :func:`spkemb.augment.offline.run_offline`; this
module parses the options, shows the progress bar and prints the summary.
"""

from __future__ import annotations

import typer

from spkemb.augment.options import AugmentOptions as A
from spkemb.cli.common import console, guarded, print_json, progress


@guarded
def augment(
    manifest: str = typer.Argument(..., metavar="MANIFEST", help="Input manifest (TSV; '-' reads stdin)."),
    output: str = typer.Option(
        ..., "-o", "--output", metavar="DIR", help="Output folder: audio files, manifest.tsv and augment.jsonl go here."
    ),
    noise: list[str] | None = typer.Option(
        None,
        "--noise",
        metavar="DIR",
        help="Noise folder, repeatable: a MUSAN root (noise/, music/, speech/ → noise, music, babble) "
        "or a plain folder of noise audio.",
    ),
    rir: str | None = typer.Option(
        None, "--rir", metavar="DIR|simulate", help="Folder of room impulse responses, or 'simulate'."
    ),
    speed: bool = typer.Option(
        A.speed, "--speed/--no-speed", help="Speed perturbation by 0.9, 1.0 or 1.1 (changes duration and pitch)."
    ),
    gain: bool = typer.Option(A.gain, "--gain/--no-gain", help="Random gain in -6..6 dB."),
    copies: int = typer.Option(1, "--copies", metavar="N", help="Augmented copies per utterance."),
    p_noise: float = typer.Option(A.p_noise, "--p-noise", metavar="P", help="Probability of adding noise to a copy."),
    p_reverb: float = typer.Option(A.p_reverb, "--p-reverb", metavar="P", help="Probability of reverberating a copy."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Random seed."),
    sample_rate: int = typer.Option(16000, "--sample-rate", metavar="HZ", help="Output sample rate."),
    workers: int = typer.Option(1, "--workers", metavar="N", help="Worker processes."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Write augmented copies of the audio in MANIFEST (noise, reverb, speed, gain) to a folder."""
    from spkemb.augment.offline import OfflineOptions, run_offline

    # The options check their values (InputError, before anything is written).
    options = OfflineOptions(
        noise=tuple(noise or ()),
        rir=rir,
        speed=speed,
        gain=gain,
        p_noise=p_noise,
        p_reverb=p_reverb,
        seed=seed,
        sample_rate=sample_rate,
    )

    def on_plan(files: int, skipped: int) -> None:
        if skipped:
            console.print(f"{skipped} of {files} output files already there; skipping them", highlight=False)

    bar = progress()
    task = None

    def on_progress(done: int, total: int, utt_id: str) -> None:
        nonlocal task
        if task is None:  # started only now, after run_offline has started its worker processes
            bar.start()
            task = bar.add_task("augment", total=total, info="")
        bar.update(task, completed=done, info=utt_id)

    try:
        result = run_offline(
            manifest, output, options, copies=copies, workers=workers, on_plan=on_plan, on_progress=on_progress
        )
    finally:
        if task is not None:  # (stopping a bar that never started would print a blank line)
            bar.stop()

    console.print(
        f"wrote {result.written} augmented files ({result.skipped} already there), "
        f"{result.manifest} and {result.records}",
        highlight=False,
    )
    if json_out:
        print_json(
            {
                "output": str(result.output),
                "manifest": str(result.manifest),
                "records": str(result.records),
                "utterances": result.utterances,
                "files": result.files,
                "written": result.written,
                "skipped": result.skipped,
            }
        )
