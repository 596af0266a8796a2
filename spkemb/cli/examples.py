"""Examples for each command's man page (EXAMPLES section): ``(what it does, command line)``.

A test checks that every option they use is one of the command's options.
"""

from __future__ import annotations

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "spkemb": [
        (
            "The whole life of an encoder, one step per command:",
            "spkemb prepare corpus/ -o manifest.tsv --trials trials.txt\n"
            "spkemb pretrain manifest.tsv -o exp/cel --config examples/configs/cel-cpu.yaml --max-steps 2000\n"
            "spkemb extract exp/cel manifest.tsv -o emb.h5\n"
            "spkemb score trials.txt emb.h5",
        ),
    ],
    "prepare": [
        (
            "A VoxCeleb-style folder (SPK/SESSION/UTT.wav), with a trial list drawn from it:",
            "spkemb prepare /data/voxceleb1/wav -o manifest.tsv --trials trials.txt --targets 5000 --nontargets 50000",
        ),
        (
            "Speakers are the folders that hold the files (audio_data/female/F_0012/1.wav):",
            "spkemb prepare /data/corpus -o manifest.tsv --speaker-level parent",
        ),
        (
            "One speaker's folder, with the ids the full corpus's trial list uses (id10270/...):",
            "spkemb prepare /data/voxceleb1/wav/id10270 -o id10270.tsv --id-prefix id10270",
        ),
        (
            "Decode every file (slow), leaving out truncated or corrupt ones; also write a Kaldi folder:",
            "spkemb prepare /data/LibriSpeech/train-clean-100 -o train.tsv --verify --export-kaldi data/train",
        ),
    ],
    "augment": [
        (
            "Two noisy, reverberant copies of every utterance, in 2 processes:",
            "spkemb augment manifest.tsv -o aug/ --noise /data/musan --rir simulate --copies 2 --workers 2",
        ),
    ],
    "pretrain": [
        (
            "CEL on a 2-core CPU for 2000 steps, with noise and simulated reverberation:",
            "spkemb pretrain manifest.tsv -o exp/cel --config examples/configs/cel-cpu.yaml --max-steps 2000 "
            "--noise /data/musan --rir simulate",
        ),
        (
            "Continue after Ctrl-C:",
            "spkemb pretrain manifest.tsv -o exp/cel --config examples/configs/cel-cpu.yaml --max-steps 2000 --resume",
        ),
        (
            "DINO on 4 GPUs:",
            "torchrun --nproc_per_node 4 -m spkemb pretrain manifest.tsv -o exp/dino "
            "--config examples/configs/dino.yaml",
        ),
        (
            "Two runs sharing a 4-core machine, 2 threads each:",
            "OMP_NUM_THREADS=2 spkemb pretrain manifest.tsv -o exp/a --method simclr --max-steps 500",
        ),
    ],
    "finetune": [
        (
            "AAM + SupCon-AAM on the manifest's speakers, from a pretrained encoder:",
            "spkemb finetune manifest.tsv -o exp/ft --init exp/cel --loss aam+supcon-aam --max-steps 2000",
        ),
        (
            "On pseudo-labels from spkemb cluster, training on the low-loss items:",
            "spkemb finetune manifest.tsv -o exp/ft-pl --init exp/cel --labels labels.tsv --loss-gate --max-steps 2000",
        ),
    ],
    "extract": [
        (
            "Embeddings of a manifest with a trained encoder, bf16 autocast:",
            "spkemb extract exp/cel manifest.tsv -o emb.h5 --precision bf16",
        ),
        (
            "The classical baseline (no weights), also exported as .npy:",
            "spkemb extract mfcc-stats manifest.tsv -o mfcc.h5 --export npy",
        ),
        (
            "On the 4 GPUs of one machine (rank 0 merges the ranks' parts):",
            "torchrun --nproc_per_node 4 -m spkemb extract exp/cel manifest.tsv -o emb.h5",
        ),
        (
            "On 2 machines, then merged:",
            "spkemb extract exp/cel manifest.tsv -o emb.0.h5 --shard 0/2\n"
            "spkemb extract exp/cel manifest.tsv -o emb.1.h5 --shard 1/2\n"
            "spkemb extract exp/cel manifest.tsv -o emb.h5 --merge emb.0.h5 --merge emb.1.h5",
        ),
        (
            "Two extractions sharing a 2-core machine, 1 thread each:",
            "spkemb extract exp/cel a.tsv -o a.h5 --threads 1 & spkemb extract exp/cel b.tsv -o b.h5 --threads 1",
        ),
    ],
    "cluster": [
        (
            "1000 pseudo-speakers: k-means to 5000 clusters, then AHC of the centroids:",
            "spkemb cluster emb.h5 -o labels.tsv --method two-stage --n-init-clusters 5000 --n-clusters 1000",
        ),
        (
            "Spectral clustering, the number of speakers estimated from the eigengap:",
            "spkemb cluster emb.h5 -o labels.tsv --method spectral --json",
        ),
    ],
    "score": [
        ("Cosine scores and EER / minDCF, the scores to a file:", "spkemb score trials.txt emb.h5 -o scores.txt"),
        (
            "Adaptive score normalisation against a training-set cohort, with a DET plot:",
            "spkemb score trials.txt emb.h5 --cohort train.h5 --norm asnorm --det det.png",
        ),
        (
            "Fit a calibration on development trials, apply it to the test trials:",
            "spkemb score dev.txt emb.h5 --fit-calibration cal.json\n"
            "spkemb score test.txt emb.h5 --calibration cal.json --json",
        ),
        (
            "Two existing scores files on one DET plot:",
            "spkemb score --scores ours.txt --scores theirs.txt --det compare.svg",
        ),
    ],
}
