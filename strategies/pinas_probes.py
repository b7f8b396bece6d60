"""What Pi-NAS measures on a trained supernet: the cross-path feature similarity (the paper's Figure 5) and the
selection criteria (linear evaluation with labels, held-out contrastive loss without), built from a search's data.

Reference: Peng et al., "Pi-NAS: Improving Neural Architecture Search by Reducing Supernet Training Consistency
Shift", ICCV 2021, sections 3.3 and 4.5.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from nni.mutable import Categorical

from nni_labelfree.data.held_out import spread_indices
from nni_labelfree.data.views import ViewConfig, ViewDataset
from nni_labelfree.selection.linear_eval import HeldOutContrastive, LinearEvaluator, batch_statistics

from .pinas_parts import ContrastiveNetwork, PathPairSampler, activate, supernet_modules

__all__ = ['figure5_paths', 'cross_path_similarity', 'dataset_has_labels', 'spread_indices', 'probe_images',
           'held_out_views', 'held_out_contrastive', 'build_linear_evaluator']

_logger = logging.getLogger(__name__)


def figure5_paths(mutables: Mapping[str, Any], sampler: PathPairSampler, count: int = 4,
                  attempts: int = 100) -> list[dict]:
    """Paths equal everywhere except in the last choice, one per candidate of it (up to ``count``): Figure 5's
    protocol ("4 architectures except the last layer are Block0..Block3"). Candidates the space's filter rejects
    are skipped; if no base path gives two variants, ``count`` independent draws are returned instead."""
    labels = [k for k, m in mutables.items() if isinstance(m, Categorical) and len(m.values) > 1]
    if labels:
        last = labels[-1]
        for _ in range(attempts):
            base = sampler.single()
            variants = []
            for value in mutables[last].values:
                path = {**base, last: value}
                if sampler.repair is not None:
                    path = sampler.repair(path, random.Random(0))
                if path[last] == value and (sampler.filter is None or sampler.filter(path)):
                    variants.append(path)
                if len(variants) == count:
                    break
            if len(variants) >= 2:
                return variants
    return [sampler.single() for _ in range(count)]


@torch.no_grad()
def cross_path_similarity(network: ContrastiveNetwork, images: torch.Tensor,
                          paths: Sequence[Mapping[str, Any]]) -> tuple[float, torch.Tensor]:
    """Mean cosine similarity of the backbone features of the same images under different paths.

    Returns the average of the off-diagonal entries of the ``[P, P]`` matrix (Figure 5's number) and the matrix;
    entry ``(p, q)`` is the cosine of path ``p``'s and path ``q``'s features, averaged over images. BN uses batch
    statistics; the supernet's state is left as it was.
    """
    switches = supernet_modules(network)
    device = next(network.parameters()).device
    features = []
    with batch_statistics(network):
        for path in paths:
            activate(switches, path)
            features.append(F.normalize(network.embed(images.to(device)).float(), dim=1))
    stacked = torch.stack(features)  # [P, N, D]
    matrix = torch.einsum('pnd,qnd->pq', stacked, stacked) / stacked.shape[1]
    count = len(paths)
    off_diagonal = (matrix.sum() - matrix.diagonal().sum()) / max(count * (count - 1), 1)
    return float(off_diagonal), matrix.cpu()


def _label_of(item: Any) -> int:
    return int(item[1]) if isinstance(item, (tuple, list)) and len(item) > 1 else -1


def dataset_has_labels(dataset: Dataset | None) -> bool:
    """Whether the first item of ``dataset`` carries a true label (``>= 0``)."""
    return dataset is not None and len(dataset) > 0 and _label_of(dataset[0]) >= 0


def _image_of(item: Any) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


def probe_images(dataset: Dataset, count: int, seed: int) -> torch.Tensor:
    """``count`` images of ``dataset`` drawn at random (:func:`spread_indices`), stacked, un-augmented."""
    return torch.stack([_image_of(dataset[i]) for i in spread_indices(len(dataset), count, seed)])


def held_out_views(dataset: Dataset, count: int, seed: int, config: ViewConfig | None,
                   stats: tuple[Sequence[float] | None, Sequence[float] | None]) -> torch.Tensor:
    """Two fixed views (epoch 0 of a seeded :class:`ViewDataset`) of ``count`` images drawn at random (seeded):
    ``[N, 2, C, H, W]``."""
    subset = Subset(dataset, spread_indices(len(dataset), count, seed))
    views = ViewDataset(subset, 2, seed=seed, config=config, mean=stats[0], std=stats[1])
    return torch.stack([v for v, _ in views.__getitems__(list(range(len(subset))))])


def held_out_contrastive(network: ContrastiveNetwork, dataset: Dataset, *, count: int, seed: int, temperature: float,
                         config: ViewConfig | None, stats: tuple) -> HeldOutContrastive:
    """The label-free criterion on ``count`` images of ``dataset``."""
    return HeldOutContrastive(network, network.forward, held_out_views(dataset, count, seed, config, stats),
                              temperature=temperature)


def build_linear_evaluator(network: ContrastiveNetwork, train: Dataset, val: Dataset, *, batch_size: int,
                           num_classes: int, seed: int, sample_arch: Callable[[], dict],
                           settings: Mapping[str, Any]) -> LinearEvaluator:
    """A :class:`LinearEvaluator` on the frozen supernet: shuffled (seeded) training loader, ordered validation."""
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=len(train) >= batch_size,
                              generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False)
    return LinearEvaluator(network, network.embed, train_loader, val_loader, sample_arch=sample_arch,
                           num_classes=num_classes, seed=seed, **dict(settings))
