"""SpeechBrain's ECAPA-TDNN pipeline speed, batch 1: the outside reference for ``bench_extract.py``.

Runs in SpeechBrain's own venv (never imported by spkemb), one utterance at a time, as
``EncoderClassifier.encode_batch`` does: soundfile decode, ``Fbank(n_mels=80)``, sentence mean
normalisation, ``ECAPA_TDNN`` (random weights, C channels). Prints one JSON line:
``{"speechbrain": version, "audio_s": ..., "audio_s_per_s": best of the repeats}``.

    /work/venvs/sb/bin/python benchmarks/sb_pipeline_speed.py '{"files": [...], "channels": 512, "threads": 2}'
"""

import json
import sys
import time

import soundfile as sf
import speechbrain
import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.processing.features import InputNormalization


def main() -> None:
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(int(cfg.get("threads", 2)))
    torch.manual_seed(0)
    c = int(cfg.get("channels", 512))
    model = ECAPA_TDNN(80, channels=[c, c, c, c, 3 * c], lin_neurons=192).eval()
    fbank, norm = Fbank(n_mels=80), InputNormalization(norm_type="sentence", std_norm=False)
    best, audio = 0.0, 0.0
    with torch.no_grad():
        for _ in range(int(cfg.get("repeats", 2))):
            audio = 0.0
            t0 = time.perf_counter()
            for path in cfg["files"]:
                wav, sr = sf.read(path, dtype="float32")
                audio += len(wav) / sr
                wavs, lens = torch.from_numpy(wav).unsqueeze(0), torch.ones(1)
                model(norm(fbank(wavs), lens), lens)
            best = max(best, audio / (time.perf_counter() - t0))
    report = {"speechbrain": speechbrain.__version__, "audio_s": round(audio, 1), "audio_s_per_s": round(best, 1)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
