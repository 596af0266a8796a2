"""The training data of ``pretrain`` and ``finetune``: ``data_options`` and the crop dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spkemb.augment.options import AugmentOptions
from spkemb.data.crops import CropDataset, ViewSpec
from spkemb.data.manifest import Utterance
from spkemb.options import opt

__all__ = ["DataOptions", "crop_dataset"]


@dataclass
class DataOptions(AugmentOptions):
    """``data_options`` of a training config: the augmentation (:class:`AugmentOptions`) and how crops
    are drawn. Speed perturbation is always drawn once per utterance, so views never differ in pitch."""

    disjoint_crops: bool = opt(False, "the crops of one utterance never overlap when it is long enough")


def crop_dataset(
    utts: Sequence[Utterance], data_options: dict[str, Any], views: ViewSpec, sample_rate: int, seed: int
) -> CropDataset:
    """The augmented crop dataset that ``data_options`` (checked: InputError) describe."""
    from spkemb.augment.chain import build_augmenter

    opts = DataOptions.from_mapping(data_options, "data_options")
    augmenter = build_augmenter(opts, sample_rate)
    return CropDataset(list(utts), sample_rate, views, augmenter=augmenter, seed=seed, disjoint=opts.disjoint_crops)
