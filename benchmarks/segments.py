"""Cut each utterance of a manifest into fixed-length segments (manifest ``start``/``end`` columns).

    python benchmarks/segments.py train.tsv -o train-seg.tsv [--seconds 3] [--min-seconds 2] [--max-seconds S]

The LibriSpeech train-clean-100 samples hold one ~12-s recording per speaker; cut into 3-s pieces,
every speaker has several items, which a PLDA training set, a cohort and a calibration trial list
drawn from different speakers need. With ``--max-seconds``, piece lengths are drawn uniformly from
``[--min-seconds, --max-seconds]`` (seeded), so a calibration set spans durations as test lists do.
A segment's utt_id is ``UTT@START-END`` (seconds, one decimal).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from spkemb.data.manifest import read_manifest, write_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--min-seconds", type=float, default=2.0, help="keep a shorter last piece down to this")
    ap.add_argument("--max-seconds", type=float, default=None, help="draw piece lengths in [min, max]")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    out = []
    for u in read_manifest(a.manifest):
        t = 0.0
        while u.duration - t >= a.min_seconds:
            length = a.seconds if a.max_seconds is None else rng.uniform(a.min_seconds, a.max_seconds)
            end = min(t + length, u.duration)
            out.append(replace(u, utt_id=f"{u.utt_id}@{t:.1f}-{end:.1f}", duration=end - t, start=t, end=end))
            t = end
    write_manifest(out, a.output)
    print(f"{len(out)} segments of {len({u.speaker for u in out})} speakers -> {a.output}")


if __name__ == "__main__":
    main()
