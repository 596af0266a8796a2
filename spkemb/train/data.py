"""The training data of ``pretrain`` and ``finetune``: ``data_options`` and the crop dataset.

:class:`DataOptions` imports no torch (the command line reads its defaults); the dataset does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spkemb.augment.options import AugmentOptions
from spkemb.data.manifest import Utterance
from spkemb.options import opt

if TYPE_CHECKING:
    from spkemb.data.crops import CropDataset, ViewSpec

__all__ = ["DataOptions", "crop_dataset"]


@dataclass
class DataOptions(AugmentOptions):
    """``data_options`` of a training config: the augmentation (:class:`AugmentOptions`) and how crops
    are drawn. Speed perturbation is always drawn once per utterance, so views never differ in pitch."""

    disjoint_crops: bool = opt(False, "the crops of one utterance never overlap when it is long enough")


def crop_dataset(
    utts: Sequence[Utterance],
    options: DataOptions | Mapping[str, Any] | None,
    views: ViewSpec,
    sample_rate: int,
    seed: int,
) -> CropDataset:
    """The augmented crop dataset of ``utts`` that ``options`` describe (``views``: the method's
    :meth:`~spkemb.methods.base.Method.crop_views`). A mapping is read as :class:`DataOptions`
    (:class:`~spkemb.errors.InputError` for a bad key or value)."""
    from spkemb.augment.chain import build_augmenter
    from spkemb.data.crops import CropDataset

    opts = options if isinstance(options, DataOptions) else DataOptions.from_mapping(options, "data_options")
    augmenter = build_augmenter(opts, sample_rate)
    return CropDataset(list(utts), sample_rate, views, augmenter=augmenter, seed=seed, disjoint=opts.disjoint_crops)
