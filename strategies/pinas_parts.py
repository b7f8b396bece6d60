"""Building blocks of Pi-NAS: the contrastive network, path pairs, the path-wise mean teacher, the key queue.

Reference: Jiefeng Peng, Jiqi Zhang, Changlin Li, Guangrun Wang, Xiaodan Liang, Liang Lin, "Pi-NAS: Improving
Neural Architecture Search by Reducing Supernet Training Consistency Shift", ICCV 2021, section 3.2.

Each piece is small and tested on its own; :mod:`.pinas_module` assembles them into the training step (the
losses and the collapse monitor are in :mod:`.pinas_loss`).
"""
from __future__ import annotations

import contextlib
import logging
import random
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nni.mutable import Categorical
from nni.nas.nn.pytorch import ModelSpace
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from nni_labelfree.heads import final_linear

from .common import rng_state_from_plain, rng_state_to_plain

__all__ = ['ContrastiveNetwork', 'PathPairSampler', 'PathwiseEMA', 'KeyQueue', 'activate', 'supernet_modules',
           'count_paths']

_logger = logging.getLogger(__name__)


# -- the network: supernet features + a projection head ------------------------------------------------------------
class ContrastiveNetwork(ModelSpace):
    """A space (or its supernet) whose classifier is bypassed by a 2-layer MLP projection head (Pi-NAS's neck).

    :meth:`embed` returns the features a linear classifier would read: the space's ``features(x)`` (globally
    average-pooled when spatial) if it has that method, else the input of its last ``nn.Linear``, captured by a
    forward pre-hook. The classifier itself stays in the space untouched (it receives no gradient here), so the
    exported, frozen architecture keeps its shape. :meth:`forward` returns ``head(embed(x))``.

    Parameters
    ----------
    space
        The model space; it must end in an ``nn.Linear`` classifier.
    embedding_dim
        Output width of the head (Pi-NAS / MoCo v2: 128).
    hidden_dim
        Hidden width of the head; default the feature width (Pi-NAS: 2048 -> 2048 -> 128).
    seed
        Seeds the head's initialisation.
    channels_last
        Keep 4-D weights and images in channels-last layout (:meth:`use_channels_last`): the same arithmetic, in
        the order oneDNN's CPU convolutions run fastest.
    """

    def __init__(self, space: nn.Module, embedding_dim: int = 128, hidden_dim: int | None = None, seed: int = 0,
                 channels_last: bool = False):
        super().__init__()
        _, _, classifier = final_linear(space)
        self.space = space
        self.feature_dim = int(classifier.in_features)
        self.embedding_dim = int(embedding_dim)
        self.uses_features = callable(getattr(space, 'features', None))
        self._classifier = [classifier]  # a list: a reference, not a second registration of the module
        hidden = int(hidden_dim or self.feature_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Sequential(nn.Linear(self.feature_dim, hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, self.embedding_dim))
        self.channels_last = False
        if channels_last:
            self.use_channels_last()

    def use_channels_last(self) -> 'ContrastiveNetwork':
        """Store every 4-D parameter and buffer channels-last and feed images that way (values unchanged).

        Only the memory layout changes, so checkpoints load either way. On this project's CPUs a NAS-Bench-201
        supernet step runs about twice as fast in this layout (``bench/pinas_step_time.py`` measures it).
        """
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[N, feature_dim]`` of the currently activated path."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.uses_features:
            features = self.space.features(x)
            features = features.flatten(2).mean(2) if features.dim() > 2 else features
        else:
            captured: list[torch.Tensor] = []
            handle = self._classifier[0].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
            try:
                self.space(x)
            finally:
                handle.remove()
            features = captured[-1].flatten(1)
        if features.shape[1] != self.feature_dim:
            raise ValueError(f'{type(self.space).__name__}: features have {features.shape[1]} channels but its '
                             f'classifier reads {self.feature_dim}. features(x) must return what the classifier '
                             'pools; fix features() or remove it so the classifier input is used.')
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def activate(modules: Sequence[BaseSuperNetModule], path: Mapping[str, Any]) -> None:
    """Route a supernet through ``path`` (every supernet module takes its choice from the dict)."""
    memo = dict(path)
    for module in modules:
        module.resample(memo=memo)


def supernet_modules(model: nn.Module) -> list[BaseSuperNetModule]:
    """The path-sampling modules of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, BaseSuperNetModule)]


# -- path pairs ------------------------------------------------------------------------------------------------
def count_paths(mutables: Mapping[str, Any], limit: int = 2) -> int:
    """Number of architectures the mutables span, capped at ``limit`` (non-categorical mutables count as many)."""
    total = 1
    for mutable in mutables.values():
        total *= len(mutable.values) if isinstance(mutable, Categorical) else limit
        if total >= limit:
            return limit
    return total


class PathPairSampler:
    """Seeded draws of single paths and of path pairs that differ in every choice that has two or more values.

    Pi-NAS samples, per block, two distinct candidates without replacement (methods.md 4.4). Here the first path
    is a uniform draw; the second takes, for every categorical choice, a uniform draw among the *other* values
    (non-categorical mutables are redrawn a few times until they differ). A space's ``repair(sample, rng)`` hook
    is applied to both and ``filter(sample)`` must accept both, else the pair is redrawn. The generator is the
    only source of randomness, so DDP ranks built with the same seed draw the same pairs.

    Parameters
    ----------
    mutables
        ``model.simplify()`` of the space.
    seed
        Seed of the generator.
    filter, repair
        Optional space hooks (see :class:`~nni_labelfree.strategies.RLNAS`).
    patience
        Draws before giving up on the filter.
    """

    def __init__(self, mutables: Mapping[str, Any], seed: int, filter: Callable[[dict], bool] | None = None,
                 repair: Callable[[dict, random.Random], dict] | None = None, patience: int = 100):
        self.mutables, self.filter, self.repair, self.patience = dict(mutables), filter, repair, patience
        self.rng = np.random.RandomState(int(seed) % 2 ** 32)

    def _uniform(self) -> dict:
        sample: dict = {}
        for mutable in self.mutables.values():
            mutable.random(memo=sample, random_state=self.rng)
        return sample

    def _other(self, first: Mapping[str, Any]) -> dict:
        second: dict = {}
        for label, mutable in self.mutables.items():
            if isinstance(mutable, Categorical):
                others = [v for v in mutable.values if v != first[label]] or list(mutable.values)
                second[label] = others[self.rng.randint(len(others))]
                continue
            for _ in range(10):
                trial = dict(second)
                mutable.random(memo=trial, random_state=self.rng)
                if any(trial[k] != first.get(k) for k in trial if k not in second):
                    break
            second = trial
        return second

    def _repaired(self, sample: dict) -> dict:
        if self.repair is None:
            return sample
        return self.repair(sample, random.Random(int(self.rng.randint(0, 2 ** 31 - 1))))

    def _accepted(self, *samples: dict) -> bool:
        return self.filter is None or all(self.filter(s) for s in samples)

    def single(self) -> dict:
        """One uniform path (repaired, filtered)."""
        for _ in range(self.patience):
            sample = self._repaired(self._uniform())
            if self._accepted(sample):
                return sample
        raise RuntimeError(f'No path passed the space filter in {self.patience} draws; check the filter.')

    def pair(self) -> tuple[dict, dict]:
        """Two paths differing wherever the space allows (repaired, both filtered)."""
        for _ in range(self.patience):
            first = self._uniform()
            second = self._other(first)
            first, second = self._repaired(first), self._repaired(second)
            if self._accepted(first, second):
                return first, second
        raise RuntimeError(f'No pair of paths passed the space filter in {self.patience} draws; check the filter.')

    def state(self) -> dict[str, Any]:
        """The generator state as plain values."""
        return rng_state_to_plain(self.rng)

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.rng.set_state(rng_state_from_plain(state))


# -- the path-wise mean teacher -------------------------------------------------------------------------------
class PathwiseEMA:
    """Exponential moving average of the student into the teacher, restricted to the modules a path ran.

    Pi-NAS updates, before computing the keys of path P, only the teacher modules on P (stem, the chosen blocks
    with any downsample they share, the head): ``theta_t <- m * theta_t + (1 - m) * theta_s``. Which modules are on
    P is observed, not inferred: :meth:`record` registers forward hooks on every student module that owns
    parameters while the student runs P, so shared modules, nested choices and repeats are handled alike. A module
    used by both paths of a step is updated twice (an effective ``m**2``), as in the paper's code.

    Parameters
    ----------
    student, teacher
        Two networks of identical structure (the teacher a deep copy of the student).
    momentum
        ``m`` in ``[0, 1]`` (Pi-NAS: 0.999).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, momentum: float):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f'momentum must lie in [0, 1] (Pi-NAS: 0.999), got {momentum!r}.')
        pairs = zip(student.named_modules(remove_duplicate=False), teacher.named_modules(remove_duplicate=False))
        self.teacher_of: dict[int, nn.Module] = {}
        for (name_s, module_s), (name_t, module_t) in pairs:
            if name_s != name_t:
                raise ValueError(f'student and teacher differ in structure at {name_s!r} / {name_t!r}.')
            self.teacher_of[id(module_s)] = module_t
        self.owners = [m for m in student.modules() if next(m.parameters(recurse=False), None) is not None]
        self.momentum = float(momentum)

    @contextlib.contextmanager
    def record(self) -> Iterator[list[nn.Module]]:
        """Collect, in order of first execution, the parameter-owning student modules run inside the block."""
        ran: dict[int, nn.Module] = {}

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            ran.setdefault(id(module), module)

        handles = [m.register_forward_hook(hook) for m in self.owners]
        modules: list[nn.Module] = []
        try:
            yield modules
        finally:
            for handle in handles:
                handle.remove()
            modules.extend(ran.values())

    @torch.no_grad()
    def update(self, modules: Sequence[nn.Module]) -> None:
        """One EMA step on the teacher copies of ``modules`` (their own parameters, not their children's)."""
        student, teacher = [], []
        for module in modules:
            student.extend(p.detach() for p in module.parameters(recurse=False))
            teacher.extend(self.teacher_of[id(module)].parameters(recurse=False))
        if teacher:
            torch._foreach_mul_(teacher, self.momentum)
            torch._foreach_add_(teacher, student, alpha=1.0 - self.momentum)


# -- the queue of negatives -----------------------------------------------------------------------------------
class KeyQueue:
    """A first-in first-out memory of ``size`` teacher keys (Pi-NAS's feature container, MoCo's queue).

    Starts as unit-norm Gaussian noise (seeded). :meth:`enqueue` overwrites the oldest rows, wrapping around the
    end, so any batch size up to ``size`` works; Pi-NAS's code requires ``size % batch == 0``, which makes every
    batch land in one contiguous block, but the first-in first-out order is the same either way.

    Parameters
    ----------
    size
        Number of keys kept (Pi-NAS: 49152).
    dim
        Key width.
    seed
        Seeds the initial noise.
    dtype
        Storage precision of the keys (float32, or bfloat16 for :func:`~strategies.pinas_loss.info_nce`'s
        reduced-precision products with the queue); enqueued keys are rounded to it.
    """

    def __init__(self, size: int, dim: int, seed: int = 0, dtype: torch.dtype = torch.float32):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f'queue_size must be a positive integer (Pi-NAS: 49152), got {size!r}.')
        generator = torch.Generator().manual_seed(seed)
        self.keys = F.normalize(torch.randn(size, dim, generator=generator), dim=1).to(dtype)
        self.pointer = 0
        self.filled = 0  # keys enqueued so far (capped at size): how much of the queue is real data

    @property
    def size(self) -> int:
        return len(self.keys)

    def enqueue(self, keys: torch.Tensor, in_place: bool = False) -> None:
        """Append ``keys`` ``[B, dim]`` (``B <= size``), dropping the ``B`` oldest.

        Parameters
        ----------
        keys
            The new keys (converted to the queue's device and precision).
        in_place
            ``False`` (default) replaces the queue tensor instead of writing it: a loss that read it as negatives
            may still need the old one for its backward pass. ``True`` writes the ``B`` rows only (no copy of the
            whole queue); use it once no autograd graph holds the queue, as
            :class:`~strategies.pinas_module.PiNASModule` does after each step's backward pass.
        """
        if keys.dim() != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f'keys must be [B, {self.keys.shape[1]}], got {tuple(keys.shape)}.')
        if len(keys) > self.size:
            raise ValueError(f'A batch of {len(keys)} keys does not fit a queue of {self.size}: raise queue_size to '
                             f'at least the global batch (ideally a multiple of it) or lower the batch size.')
        rows = ((self.pointer + torch.arange(len(keys))) % self.size).to(self.keys.device)
        if in_place:
            self.keys.index_copy_(0, rows, keys.detach().to(self.keys))
        else:
            self.keys = self.keys.index_copy(0, rows, keys.detach().to(self.keys))
        self.pointer = int((self.pointer + len(keys)) % self.size)
        self.filled = min(self.size, self.filled + len(keys))

    def ordered(self) -> torch.Tensor:
        """The keys from oldest to newest."""
        return torch.roll(self.keys, -self.pointer, dims=0)

    def to(self, device: torch.device | str) -> 'KeyQueue':
        self.keys = self.keys.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {'keys': self.keys.detach().cpu().clone(), 'pointer': self.pointer, 'filled': self.filled}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if tuple(state['keys'].shape) != tuple(self.keys.shape):
            raise ValueError(f'The checkpoint\'s queue is {tuple(state["keys"].shape)} but this search uses '
                             f'{tuple(self.keys.shape)}: resume with the original queue_size and embedding_dim.')
        # a copy, converted to this queue's device and precision: rows are later written in place
        self.keys = state['keys'].to(self.keys, copy=True)
        self.pointer, self.filled = int(state['pointer']), int(state['filled'])
