"""The finetune job: manifest + labels (+ a pretrained encoder) -> experiment folder with encoder.pt.

Labels come from the manifest's ``speaker`` column or from a labels file (``utt_id label`` lines,
e.g. the output of ``spkemb cluster``). Utterances without a label are left out (and counted).
Batches are P speakers x K items (:class:`~spkemb.data.pk_sampler.PKSampler`), every item
``n_crops`` augmented crops; the Trainer, resume, DDP and precision are those of ``pretrain``.
The experiment folder also gets ``classes.txt`` (class index -> label, one per line).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from spkemb.data.manifest import Utterance
from spkemb.errors import InputError
from spkemb.train.config import TrainConfig, config_dict, merge_config, typed_options
from spkemb.train.report import Reporter
from spkemb.utils.fileio import atomic_write_text

__all__ = ["run_finetune", "finetune_config", "assign_labels", "load_init", "LabelledSet"]


@dataclass
class LabelledSet:
    """The utterances that have a label, their class indices and the class names."""

    utts: list[Utterance]
    classes: list[str]  # class index -> label
    targets: list[int]  # one class index per utterance
    unlabelled: int  # manifest utterances left out for want of a label


def assign_labels(utts: Sequence[Utterance], labels: dict[str, str] | None, labels_path: str | None = None,
                  manifest_path: str | Path | None = None) -> LabelledSet:  # fmt: skip
    """Each utterance's class from ``labels`` (utt_id -> label) or, without it, its speaker.

    A labels file that names utterances missing from the manifest, that covers none of them, or
    that leaves fewer than 2 classes is an :class:`InputError`; so is a manifest without speakers.
    """
    if labels is not None:
        ids = {u.utt_id for u in utts}
        missing = [k for k in labels if k not in ids]
        if missing:
            raise InputError(
                f"{len(missing)} labelled utterance(s) are not in the manifest (e.g. {missing[0]!r}); "
                "the labels must come from the same manifest",
                labels_path,
            )
        named = {u.utt_id: labels.get(u.utt_id) for u in utts}
        if not any(named.values()):
            raise InputError("the labels cover no utterance of the manifest", labels_path)
    else:
        named = {u.utt_id: u.speaker or None for u in utts}
        if not any(named.values()):
            raise InputError(
                "the manifest has no speaker column values; give `labels` (a labels file, e.g. from spkemb cluster)",
                manifest_path,
            )
    kept = [u for u in utts if named[u.utt_id]]
    classes = sorted({str(named[u.utt_id]) for u in kept})
    if len(classes) < 2:
        raise InputError(f"the labels give {len(classes)} speaker(s); finetuning needs at least 2", labels_path)
    index = {c: i for i, c in enumerate(classes)}
    return LabelledSet(kept, classes, [index[str(named[u.utt_id])] for u in kept], len(utts) - len(kept))


RANDOM_FRONTEND = (
    "{encoder}: no `encoder_kwargs.frontend_weights` and no `init`, so its WavLM frontend is RANDOM and this run "
    "trains it from scratch (far more data and time than finetuning a pretrained one). To finetune a pretrained WavLM, "
    "stop and give `encoder_kwargs.frontend_weights` PATH (a torchaudio state dict or a Hugging Face folder)"
)


def check_output(out_dir: str | Path, init: str | Path | None, labels_path: str | None, overwrite: bool) -> None:
    """Refuse, before anything is loaded, an ``-o`` that is a file (the manifest, the labels, an
    encoder.pt) or a folder whose own encoder is the ``--init`` one (``--overwrite`` would replace
    the input this run reads)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("-o is an existing file; it must name an experiment folder (exp/NAME)", out)
    from spkemb.utils.fileio import same_file

    if labels_path is not None and same_file(out, labels_path):
        raise InputError("-o is the `labels` file; choose another experiment folder", out)
    if init is None:
        return
    src = Path(init)
    src = src / "encoder.pt" if src.is_dir() else src
    try:
        inside = src.resolve().is_relative_to(out.resolve())
    except OSError:
        inside = False
    if inside:
        raise InputError(
            f"`init` {init} is inside the -o folder, whose encoder.pt this run "
            + ("replaces (`overwrite`)" if overwrite else "writes")
            + "; give another -o (or copy the encoder elsewhere first)",
            out,
        )


def speed_classes(options: Any, dataset: Any, reporter: Reporter) -> Any:
    """``options`` (SupervisedOptions) with ``speed_variants`` set: with speed perturbation and
    ``speed_as_speaker``, each speed factor of the dataset is a class of its own (Kaldi's and
    WeSpeaker's recipes: a speaker at 0.9x and at 1.1x are two more speakers), said once."""
    factors = tuple(getattr(dataset, "speed_factors", (1.0,)))
    if len(factors) < 2:
        return options
    if not options.speed_as_speaker:
        reporter.message("speed perturbation: a sped-up item keeps its speaker's class (speed_as_speaker false)")
        return options
    n = len(factors)
    reporter.message(
        f"speed perturbation: each speed ({', '.join(f'{f:g}' for f in factors)}) is a class of its own, "
        f"{n * options.n_classes} classes for {options.n_classes} speakers, as the Kaldi and WeSpeaker recipes "
        "(`method_options` speed_as_speaker=false keeps the speaker's class)"
    )
    return options.replace(speed_variants=n)


def fit_speakers(batch_size: int, k: int, n_classes: int, reporter: Reporter | None = None) -> int:
    """P, the distinct speakers of a P x K batch: ``batch_size // k``, or the number of classes when
    the labels have fewer (a pseudo-label run with fewer clusters than P, the demo's 24 speakers at
    the loop's batch of 32), with a notice: the batch then holds ``P * k`` items."""
    p = batch_size // k
    if n_classes >= p:
        return p
    if reporter is not None:
        reporter.message(
            f"note: batch_size {batch_size} asks for P={p} distinct speakers per batch (K={k}), the labels have "
            f"{n_classes}: P={n_classes}, {n_classes * k} items per batch"
        )
    return n_classes


def init_path(init: str | Path) -> Path:
    """``encoder.pt`` of an experiment folder, or the file itself."""
    p = Path(init)
    if p.is_dir():
        p = p / "encoder.pt"
    if not p.is_file():
        raise InputError("no such encoder file (give an encoder.pt or an experiment folder that has one)", init)
    return p


def init_config(init: str | Path) -> dict[str, Any]:
    """The encoder config stored in an ``init`` file (name plus options)."""
    from spkemb.models import load_encoder

    return dict(load_encoder(init_path(init)).config)  # type: ignore[arg-type]


def finetune_config(
    file_cfg: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None,
    init: str | Path | None = None,
    source: str | Path | None = None,
) -> TrainConfig:
    """The finetune configuration: defaults < ``file_cfg`` (read from ``source``) < ``overrides``
    (``None``: not given), method ``supervised``. With ``init`` and no encoder named (in either), the
    encoder is the architecture stored in ``init`` (its options under any ``encoder_kwargs`` given)."""
    over = {**(overrides or {}), "method": "supervised"}
    if init is not None and over.get("encoder") is None and "encoder" not in (file_cfg or {}):
        arch = init_config(init)  # the architecture of the pretrained encoder
        over["encoder"] = str(arch.pop("name"))
        over["encoder_kwargs"] = {**arch, **(over.get("encoder_kwargs") or {})}
    return merge_config(file_cfg, over, source=source)


def load_init(encoder: nn.Module, init: str | Path) -> dict[str, int]:
    """Copy the weights of ``init`` into ``encoder``; refuse (InputError) a file that loads nothing or
    whose tensors do not fit. Returns ``{"loaded": n, "total": m}``."""
    from spkemb.models import load_encoder

    path = init_path(init)
    source = load_encoder(path).state_dict()
    target = encoder.state_dict()
    mismatched = [k for k, v in source.items() if k in target and target[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise InputError(
            f"does not fit the encoder being finetuned: {k} is {tuple(source[k].shape)} there, "
            f"{tuple(target[k].shape)} here (another architecture or size?)",
            path,
        )
    shared = {k: v for k, v in source.items() if k in target}
    if not shared or len(shared) < len(target):
        raise InputError(f"loads {len(shared)} of the encoder's {len(target)} tensors: another architecture?", path)
    encoder.load_state_dict(shared)
    return {"loaded": len(shared), "total": len(target)}


def run_finetune(
    utts: list[Utterance],
    cfg: TrainConfig,
    out_dir: str | Path,
    init: str | Path | None = None,
    labels: dict[str, str] | None = None,
    labels_path: str | None = None,
    reporter: Reporter | None = None,
    manifest_path: str | Path | None = None,
) -> dict[str, Any]:
    """Finetune ``cfg.encoder`` (from ``init`` when given) on the labelled ``utts`` (read from
    ``manifest_path``, named in messages) into ``out_dir``."""
    from spkemb.data.crops import collate_crops, resample_note
    from spkemb.data.pk_sampler import PKSampler
    from spkemb.methods.supervised import Supervised, SupervisedOptions
    from spkemb.models import save_encoder
    from spkemb.train.data import DataOptions, crop_dataset
    from spkemb.train.pretrain import build_encoder_from, prepare_cpu
    from spkemb.train.trainer import Trainer, seed_everything

    reporter = reporter or Reporter()
    check_output(out_dir, init, labels_path, bool(cfg.overwrite))
    data = assign_labels(utts, labels, labels_path, manifest_path)
    typed = typed_options(cfg)  # bad keys refused before any work
    assert isinstance(typed.method, SupervisedOptions) and isinstance(typed.data, DataOptions)
    options = typed.method.replace(n_classes=len(data.classes))
    k = options.items_per_speaker
    if cfg.batch_size // k < 2:
        raise InputError(f"batch_size: {cfg.batch_size} holds fewer than 2 speakers of {k} items each")
    if init is not None and (cfg.encoder_kwargs or {}).get("frontend_weights"):
        raise InputError(
            "`init` gives every weight of the encoder, its WavLM frontend's too, so "
            "`encoder_kwargs.frontend_weights` would be overwritten: give one of them",
            init,
        )
    p = fit_speakers(cfg.batch_size, k, len(data.classes), reporter)
    seed_everything(cfg.seed)
    prepare_cpu(cfg, reporter)
    encoder = build_encoder_from(cfg, reporter)
    loaded = load_init(encoder, init) if init is not None else None
    if loaded is not None:
        reporter.message(f"init: loaded {loaded['loaded']} of {loaded['total']} encoder tensors from {init}")
    random_frontend = init is None and hasattr(encoder, "frontend_loaded") and encoder.frontend_loaded is None
    if random_frontend:
        reporter.message(RANDOM_FRONTEND.format(encoder=cfg.encoder), warning=True)
    sr = int(getattr(encoder, "sample_rate"))  # noqa: B009
    dataset = crop_dataset(data.utts, typed.data, Supervised.views(options), sr, cfg.seed)
    note = resample_note(data.utts, sr)
    if note:
        reporter.message(note)
    options = speed_classes(options, dataset, reporter)
    try:
        method = Supervised(encoder, options, labels=data.targets, names=([u.utt_id for u in data.utts], data.classes))
    except ValueError as err:
        raise InputError(f"method 'supervised': {err}") from None

    def sampler(n: int, batch_size: int, seed: int, rank: int, world: int) -> PKSampler:
        return PKSampler(data.targets, p, k, seed, rank, world)

    out = Path(out_dir)

    def export(path: Path) -> None:
        save_encoder(
            method.encoder,
            path,
            extra={
                "method": "supervised",
                "init": str(init) if init else None,
                "classes": len(data.classes),
                "config": config_dict(cfg),
            },
        )
        atomic_write_text(out / "classes.txt", "".join(f"{c}\n" for c in data.classes))

    reporter.message(
        f"{len(data.utts)} utterances of {len(data.classes)} speakers"
        + (f"; {data.unlabelled} without a label left out" if data.unlabelled else "")
    )
    summary = Trainer(
        method, dataset, collate_crops, cfg, out, export_encoder=export, reporter=reporter, sampler_factory=sampler
    ).fit()
    return {
        **summary,
        "classes": len(data.classes),
        "utterances": len(data.utts),
        "unlabelled": data.unlabelled,
        "init": str(init) if init else None,
        "init_tensors": loaded["loaded"] if loaded else 0,
        **({"frontend": "random"} if random_frontend else {}),
    }
