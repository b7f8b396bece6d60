"""Pretext heads: the searched network with its classifier adapted to a self-supervised task (UnNAS).

Reference: Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020 (section 3 and the pycls
``Classifier``/``Preprocess`` modules it describes):

- ``rotation`` (and ``supervised``): the space's final ``nn.Linear`` gets as many outputs as the task has classes.
- ``jigsaw``: siamese; the tiles of a puzzle go through the shared network as one batch, the final linear is
  removed so the network returns pooled features, the features of the ``G*G`` tiles are concatenated in slot order
  and one ``nn.Linear(C * G*G, K)`` predicts the permutation.
- ``colorization``: needs spatial features, so the space must implement ``features(x) -> [N, C, h, w]`` (the
  feature map its classifier pools); a 1x1 convolution predicts the 313 ab bins per position, upsampled bilinearly
  (``align_corners=True``) to the input size. The space must also take 1-channel input (the L channel).

The wrapper is itself an NNI ``ModelSpace`` holding the space, so NNI sees the same choices and labels.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from nni.nas.nn.pytorch import ModelSpace

__all__ = ['PretextNetwork', 'PRETEXT_TASKS', 'final_linear']

_logger = logging.getLogger(__name__)

PRETEXT_TASKS = ('rotation', 'colorization', 'jigsaw', 'supervised')


def final_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """``(parent, attribute name, layer)`` of the last ``nn.Linear`` registered in ``model``."""
    found = None
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name, child)
    if found is None:
        raise ValueError(f'{type(model).__name__} has no nn.Linear classifier; label-free strategies adapt the '
                         'final nn.Linear to their task. Add a linear classification head to the space.')
    return found


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


class PretextNetwork(ModelSpace):
    """A search space with its head replaced for a pretext task.

    Parameters
    ----------
    space
        The model space (or its one-shot supernet).
    task
        One of :data:`PRETEXT_TASKS`.
    num_outputs
        Classes of the task: 4 (rotation), 313 (colorization), the permutation count (jigsaw), the label count
        (supervised).
    tiles
        Jigsaw only: tiles per puzzle (``G*G``).
    """

    def __init__(self, space: nn.Module, task: str, num_outputs: int, tiles: int = 1):
        super().__init__()
        if task not in PRETEXT_TASKS:
            raise ValueError(f'Unknown pretext task {task!r}; expected one of {", ".join(PRETEXT_TASKS)}.')
        self.task = task
        parent, name, linear = final_linear(space)
        self.feature_dim = linear.in_features
        if task in ('rotation', 'supervised'):
            if linear.out_features != num_outputs:
                setattr(parent, name, nn.Linear(linear.in_features, num_outputs))
            self.head = nn.Identity()
        elif task == 'jigsaw':
            setattr(parent, name, nn.Identity())  # the space now returns pooled features
            self.head = nn.Linear(self.feature_dim * tiles, num_outputs)
        else:
            self._check_colorization(space)
            self.head = nn.Conv2d(self.feature_dim, num_outputs, kernel_size=1)
        self.space = space

    @staticmethod
    def _check_colorization(space: nn.Module) -> None:
        if not callable(getattr(space, 'features', None)):
            raise ValueError(f'Colorization needs spatial features, but {type(space).__name__} has no features(x) '
                             'method. Add `features(x) -> [N, C, h, w]` (the map the classifier pools) to the space.')
        conv = _first_conv(space)
        if conv is not None and conv.in_channels != 1:
            raise ValueError(f'Colorization feeds the L channel only, but the space\'s first convolution takes '
                             f'{conv.in_channels} channels. Build the space with in_channels=1.')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == 'jigsaw':
            if x.dim() != 5:
                raise ValueError(f'Jigsaw expects tiles shaped [B, G*G, C, t, t], got {tuple(x.shape)}.')
            batch, tiles = x.shape[:2]
            features = self.space(x.flatten(0, 1)).reshape(batch, tiles * self.feature_dim)
            return self.head(features)
        if self.task == 'colorization':
            logits = self.head(self.space.features(x))
            return F.interpolate(logits, size=x.shape[-2:], mode='bilinear', align_corners=True)
        return self.space(x)
