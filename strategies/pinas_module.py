"""The Lightning module of :class:`~nni_labelfree.strategies.PiNAS`: the contrastive training step, the path-wise
mean teacher, the key queue, per-epoch probes, selection and checkpoints (see :mod:`strategies.pinas`).

Reference: Peng et al., "Pi-NAS: Improving Neural Architecture Search by Reducing Supernet Training Consistency
Shift", ICCV 2021, section 3.2 (Eq. 1-4) and 4.5 (Table 7, Figure 5).
"""
from __future__ import annotations

import copy
import logging
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.nn import functional as F

from nni.nas.oneshot.pytorch.sampling import RandomSamplingLightningModule

from nni_labelfree.data import EpochShuffleSampler, derive_seed
from nni_labelfree.data.views import ViewDataset
from nni_labelfree.heads import final_linear

from .pinas_loss import CollapseMonitor, consistency_loss, embedding_spread, info_nce, key_plan
from .pinas_parts import ContrastiveNetwork, KeyQueue, PathPairSampler, PathwiseEMA, activate, supernet_modules
from . import pinas_probes as probes

if TYPE_CHECKING:  # the strategy imports this module
    from .pinas import PiNAS

__all__ = ['PiNASModule']

_logger = logging.getLogger(__name__)

STREAMS = {'queue': 0x5155, 'head': 0x4844, 'probe': 0x5052, 'eval': 0x4556, 'views': 0x5657, 'shuffle': 0x5342}


# teacher_precision -> autocast dtype of the key passes (None: plain float32)
TEACHER_PRECISIONS = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
# queue_precision -> storage dtype of the queue, and precision of the products with it
QUEUE_PRECISIONS = {'float32': torch.float32, 'bfloat16': torch.bfloat16}


def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX); False when it cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def slow_bfloat16_note(device: torch.device, teacher_precision: str, queue_precision: str,
                       native: Callable[[], bool] | None = None) -> str | None:
    """A warning for bfloat16 options on a CPU that would emulate bfloat16 (slower than float32), else None."""
    chosen = [f"{name}='bfloat16'" for name, value in (('teacher_precision', teacher_precision),
                                                       ('queue_precision', queue_precision)) if value == 'bfloat16']
    if not chosen or torch.device(device).type != 'cpu' or (native or cpu_has_native_bfloat16)():
        return None
    return (f'PiNAS: {" and ".join(chosen)} on a CPU without native bfloat16 (AVX512-BF16 or AMX): oneDNN emulates '
            'it there, which is usually slower than float32. Use float32 on this machine; the option pays off on '
            'CPUs with AVX512-BF16/AMX and on GPUs.')


class PiNASModule(RandomSamplingLightningModule):
    """The Lightning module behind :class:`PiNAS`: the contrastive step, the teacher, the queue, the probes.

    Per epoch it records (in :attr:`history`, and through ``self.log``): ``contrastive_loss``,
    ``contrastive_acc`` (how often the positive key beats every negative; in-batch keys when negatives are off),
    ``embedding_spread`` (collapse monitor), ``collapsed``, ``cross_path_similarity`` (Figure 5) and, every
    ``linear_eval_every`` epochs when labels exist, ``linear_eval_acc``. Per step it logs ``train_loss`` and
    ``train_acc`` (the same two numbers, under the names NNI's evaluator reports).
    """

    def __init__(self, training_module, strategy: 'PiNAS'):
        super().__init__(training_module, filter=strategy.filter)
        self.strategy = strategy
        self.sampler: PathPairSampler | None = None
        self.queue: KeyQueue | None = None
        self.collapse = CollapseMonitor(strategy.collapse_threshold, strategy.collapse_patience)
        self.history: list[dict[str, float]] = []
        self.last_paths: tuple[dict, dict] | None = None
        self.search_result: list[tuple[dict, float]] | None = None
        self.selection_kind: str | None = None  # 'linear_eval' or 'label_free' once selected
        self.view_datasets: list[ViewDataset] = []
        self.shuffle_samplers: list[EpochShuffleSampler] = []
        self.train_base = self.val_base = None  # the evaluator's image datasets (labels, if any, for selection)
        self.probe_paths: list[dict] | None = None
        self.similarity_matrix: torch.Tensor | None = None
        self.steps = 0
        self._pending_keys: torch.Tensor | None = None  # this step's keys, enqueued after its backward pass
        self._sums: dict[str, float] = {}
        self._data_epoch = 0
        self.__dict__['_teacher'] = None  # kept out of the module tree: no optimiser, no DDP, no Lightning state
        self._ema: PathwiseEMA | None = None
        self._switches: dict[str, list] = {}

    # -- state ----------------------------------------------------------------------------------------------------
    @property
    def network(self) -> ContrastiveNetwork:
        return self.model  # type: ignore[return-value]

    @property
    def teacher(self) -> ContrastiveNetwork | None:
        """The EMA teacher (None with ``mean_teacher=False``: the student then gives the keys)."""
        return self.__dict__['_teacher']

    def _ensure_state(self) -> None:
        strategy, network = self.strategy, self.network
        if self.sampler is None:
            self.sampler = PathPairSampler(network.simplify(), strategy.seed, strategy.filter, strategy.repair)
            self._switches['student'] = supernet_modules(network)
        if self.queue is None:
            self.queue = KeyQueue(strategy.queue_size, network.embedding_dim,
                                  seed=derive_seed(strategy.seed, STREAMS['queue']),
                                  dtype=QUEUE_PRECISIONS[strategy.queue_precision])
        if strategy.mean_teacher and self.teacher is None:
            teacher = copy.deepcopy(network)
            teacher.requires_grad_(False)
            self.__dict__['_teacher'] = teacher
            self._ema = PathwiseEMA(network, teacher, strategy.momentum)
            self._switches['teacher'] = supernet_modules(teacher)

    def resample(self) -> dict:
        """Route the student through one seeded uniform path (as NNI's sampling modules do)."""
        self._ensure_state()
        path = self.sampler.single()
        activate(self._switches['student'], path)
        return path

    # -- training step --------------------------------------------------------------------------------------------
    def _views(self, batch: Any) -> torch.Tensor:
        views = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not torch.is_tensor(views) or views.dim() != 5 or views.shape[1] not in (2, 4):
            shape = tuple(views.shape) if torch.is_tensor(views) else type(views).__name__
            raise ValueError(f'Pi-NAS trains on batches of views [B, 2 or 4, C, H, W] (nni_labelfree.data.ViewDataset;'
                             f' PiNAS wraps the evaluator\'s images itself), got {shape}.')
        if len(views) < 2:
            raise ValueError('Pi-NAS needs at least 2 images per batch (BatchNorm on batch statistics and a '
                             'contrastive loss); raise the batch size.')
        return views

    def _query(self, path: dict, images: torch.Tensor) -> tuple[torch.Tensor, list]:
        with (self._ema.record() if self._ema is not None else _nothing()) as ran:
            activate(self._switches['student'], path)
            query = F.normalize(self.network(images), dim=1)
        return query, ran

    @torch.no_grad()
    def _key(self, path: dict, images: torch.Tensor) -> torch.Tensor:
        """Unit keys of ``images`` through ``path`` from the teacher (or the student without a mean teacher)."""
        network = self.teacher if self.teacher is not None else self.network
        if not network.training:  # (a recursive call on every step costs a walk over all modules)
            network.train()
        activate(self._switches['teacher' if self.teacher is not None else 'student'], path)
        dtype = TEACHER_PRECISIONS[self.strategy.teacher_precision]
        with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return F.normalize(self._key_features(network, images).float(), dim=1)

    def _key_features(self, network: ContrastiveNetwork, images: torch.Tensor) -> torch.Tensor:
        groups = min(self.strategy.key_bn_groups, len(images) // 2)
        if groups <= 1:
            return network(images)
        # Shuffle-BN on one process (MoCo): keys are normalised over random sub-batches, so their batch statistics
        # differ from the queries' and the positive cannot be found by a shared batch signature.
        generator = torch.Generator().manual_seed(derive_seed(self.strategy.seed, STREAMS['shuffle'], self.steps))
        order = torch.randperm(len(images), generator=generator).to(images.device)
        keys = torch.empty(len(images), self.network.embedding_dim, device=images.device)
        for part in order.chunk(groups):
            keys[part] = network(images[part]).to(keys)
        return keys

    def _keys(self, paths: tuple[dict, dict], views: torch.Tensor, ran: tuple[list, list]) -> tuple:
        """``(k_i, k_j)``: EMA on ``P_i``'s modules, key through ``P_i``; then the same for ``P_j`` (paper order)."""
        view_i, view_j, _ = key_plan(views.shape[1], self.strategy.cross_path)
        with torch.no_grad():
            if self._ema is not None:
                self._ema.update(ran[0])
            key_i = self._key(paths[0], views[:, view_i])
            if self._ema is not None:
                self._ema.update(ran[1])
            key_j = self._key(paths[1], views[:, view_j])
        return key_i, key_j

    def _loss(self, queries: tuple, positives: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        if self.strategy.negatives:
            # both terms (q_i with its positive, q_j with its own) in one pass over the queue; the two halves have
            # equal size, so twice the mean over both is the paper's sum of the two mean terms
            loss, accuracy = info_nce(torch.cat(queries), torch.cat(positives), self.queue.keys,
                                      self.strategy.temperature)
            return 2 * loss, accuracy
        loss = consistency_loss(queries[0], positives[0]) + consistency_loss(queries[1], positives[1])
        with torch.no_grad():  # in-batch retrieval, a diagnostic only (chance level once collapsed)
            target = torch.arange(len(queries[0]), device=loss.device)
            acc = sum(((q @ k.t()).argmax(1) == target).float().mean() for q, k in zip(queries, positives)) / 2
        return loss, acc

    def _enqueue(self, keys: torch.Tensor) -> None:
        self._flush_keys(in_place=False)  # keys left by a step whose batch end never came (driven by hand after a fit)
        if self._trainer is None:  # driven by hand (tests): one process, and the caller may still backpropagate
            self.queue.enqueue(keys.detach())
            return
        gathered = self.all_gather(keys.detach())
        # The loss still holds the queue for the backward pass, so the keys wait for the batch's end and are then
        # written in place (replacing the queue instead would copy all of it every step).
        self._pending_keys = gathered.flatten(0, 1) if gathered.dim() == 3 else gathered

    def _flush_keys(self, in_place: bool = True) -> None:
        """Enqueue the last step's keys; in place only where its backward pass is known to be done."""
        if self._pending_keys is not None:
            self.queue.enqueue(self._pending_keys, in_place=in_place)
            self._pending_keys = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> None:
        self._flush_keys()
        return super().on_train_batch_end(outputs, batch, batch_idx, *args, **kwargs)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        views = self._views(batch)
        self._check_queue(len(views))
        paths = self.sampler.pair()
        self.last_paths = paths
        (query_i, ran_i), (query_j, ran_j) = self._query(paths[0], views[:, 0]), self._query(paths[1], views[:, 1])
        key_i, key_j = self._keys(paths, views, (ran_i, ran_j))
        crossed = key_plan(views.shape[1], self.strategy.cross_path)[2]
        positives = (key_j, key_i) if crossed else (key_i, key_j)
        loss, accuracy = self._loss((query_i, query_j), positives)
        if self.strategy.negatives:
            self._enqueue((key_i + key_j) / 2)  # the unnormalised mean, as Pi-NAS's code
        self._after_step(loss, accuracy, (query_i, query_j))
        return loss

    def _check_queue(self, batch_size: int) -> None:
        world = getattr(self.trainer, 'world_size', 1) if self._trainer is not None else 1
        if self.strategy.negatives and batch_size * world > self.queue.size:
            raise ValueError(f'queue_size={self.queue.size} is smaller than the global batch of {batch_size * world} '
                             'keys enqueued per step. Raise queue_size (ideally to a multiple of the global batch) '
                             'or lower the batch size.')

    def _after_step(self, loss: torch.Tensor, accuracy: torch.Tensor, queries: tuple) -> None:
        self.steps += 1
        spread = sum(embedding_spread(q) for q in queries) / len(queries)  # over images, path by path
        if self.collapse.update(spread, self.steps):
            self._report_collapse(spread)
        values = {'contrastive_loss': float(loss.detach()), 'contrastive_acc': float(accuracy),
                  'embedding_spread': spread}
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
            self.log(name, value, on_step=False, on_epoch=True)
        self._sums['steps'] = self._sums.get('steps', 0.0) + 1
        self.log('train_loss', loss, prog_bar=True)
        self.log('train_acc', accuracy, prog_bar=True)

    def _report_collapse(self, spread: float) -> None:
        why = (' This is the expected failure without negatives (negatives=False, the paper\'s "w/o nontrivial" '
               'ablation, Table 7): re-enable negatives.' if not self.strategy.negatives else
               ' Lower the learning rate or the temperature, or raise the queue size.')
        message = (f'Pi-NAS: the supernet collapsed at step {self.steps}: the spread of its embeddings over a batch '
                   f'({spread:.4f}) stayed below {self.collapse.threshold} for {self.collapse.patience} steps, so it '
                   f'maps every image to nearly the same vector and can no longer rank architectures.{why}')
        _logger.warning(message)
        warnings.warn(message, RuntimeWarning)
        if self.strategy.stop_on_collapse and self._trainer is not None:
            self.trainer.should_stop = True

    # -- epochs and probes ----------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._ensure_state()
        note = slow_bfloat16_note(self.device, self.strategy.teacher_precision, self.strategy.queue_precision)
        if note:
            _logger.warning(note)
            warnings.warn(note, RuntimeWarning)
        if self.teacher is not None:
            self.teacher.to(self.device)
        self.queue.to(self.device)
        if self.probe_paths is None:
            probe_sampler = PathPairSampler(self.network.simplify(), derive_seed(self.strategy.seed, STREAMS['probe']),
                                            self.strategy.filter, self.strategy.repair)
            self.probe_paths = probes.figure5_paths(self.network.simplify(), probe_sampler)
        return super().on_fit_start()

    def on_train_epoch_start(self) -> None:
        self.set_data_epoch(self.trainer.current_epoch)
        return super().on_train_epoch_start()

    def set_data_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s shuffle order and views."""
        self._data_epoch = int(epoch)
        for item in [*self.view_datasets, *self.shuffle_samplers]:
            item.set_epoch(self._data_epoch)

    def cross_path_similarity(self) -> float:
        """Figure 5's number on the probe images (held-out if the evaluator has validation data)."""
        source = self.val_base if self.val_base is not None else self.train_base
        if source is None or self.probe_paths is None:
            return float('nan')
        seed = derive_seed(self.strategy.seed, STREAMS['probe'], 1)  # key 1: the images (the paths use the bare stream)
        images = probes.probe_images(source, self.strategy.probe_images, seed)
        value, self.similarity_matrix = probes.cross_path_similarity(self.network, images, self.probe_paths)
        return value

    def epoch_metrics(self) -> dict[str, float]:
        """The current epoch's metrics, computed once per epoch: callbacks (which Lightning runs before this
        module's ``on_train_epoch_end``) may call it, and checkpoints saved at an epoch's end include it."""
        epoch = self.trainer.current_epoch + 1
        if self.history and self.history[-1]['epoch'] == epoch:
            return self.history[-1]
        steps = max(self._sums.pop('steps', 0.0), 1.0)
        metrics = {'epoch': epoch, **{k: v / steps for k, v in self._sums.items()},
                   'collapsed': float(self.collapse.collapsed), 'cross_path_similarity': self.cross_path_similarity()}
        every = self.strategy.linear_eval_every
        if every and epoch % every == 0 and self.has_labels():
            evaluator = self.linear_evaluator(steps=self.strategy.linear_eval.get('epoch_steps', 50))
            evaluator.fit()
            metrics['linear_eval_acc'] = sum(evaluator.accuracy(p) for p in self.probe_paths) / len(self.probe_paths)
        self._sums = {}
        self.history.append(metrics)
        return metrics

    def on_train_epoch_end(self) -> None:
        for name, value in self.epoch_metrics().items():
            if name not in ('epoch', 'contrastive_loss', 'contrastive_acc', 'embedding_spread'):
                self.log(name, float(value))
        return super().on_train_epoch_end()

    # -- selection ------------------------------------------------------------------------------------------------
    def has_labels(self) -> bool:
        """Whether both the training and the validation images of the evaluator carry true labels."""
        return probes.dataset_has_labels(self.train_base) and probes.dataset_has_labels(self.val_base)

    def _eval_sampler(self) -> PathPairSampler:
        return PathPairSampler(self.network.simplify(), derive_seed(self.strategy.seed, STREAMS['eval']),
                               self.strategy.filter, self.strategy.repair)

    def linear_evaluator(self, **overrides: Any):
        """A :class:`~nni_labelfree.selection.LinearEvaluator` on the evaluator's labeled train/val images."""
        num_classes = (getattr(self.train_base, 'num_true_classes', None)
                       or final_linear(self.network.space)[2].out_features)
        settings = {k: v for k, v in {**self.strategy.linear_eval, **overrides}.items() if k != 'epoch_steps'}
        return probes.build_linear_evaluator(self.network, self.train_base, self.val_base,
                                             batch_size=self.strategy.batch_size or 64, num_classes=int(num_classes),
                                             seed=derive_seed(self.strategy.seed, STREAMS['eval']),
                                             sample_arch=self._eval_sampler().single, settings=settings)

    def selection_fitness(self) -> tuple[Callable[[dict], float], str]:
        """The fitness :meth:`PiNAS.select` ranks by, and its kind (``'linear_eval'`` or ``'label_free'``)."""
        mode = self.strategy.selection
        if mode == 'linear_eval' and not self.has_labels():
            raise ValueError('selection="linear_eval" needs labeled training and validation images in the evaluator '
                             '(labels >= 0); pass labeled loaders or use selection="label_free".')
        if mode == 'linear_eval' or (mode == 'auto' and self.has_labels()):
            evaluator = self.linear_evaluator()
            evaluator.fit()
            return evaluator, 'linear_eval'
        source = self.val_base if self.val_base is not None else self.train_base
        return probes.held_out_contrastive(
            self.network, source, count=self.strategy.held_out_images, temperature=self.strategy.temperature,
            seed=derive_seed(self.strategy.seed, STREAMS['views']), config=self.strategy.views,
            stats=self.strategy.view_stats), 'label_free'

    def export(self) -> dict[str, Any]:
        """The best architecture by the selection criterion; the ranking is kept in :attr:`search_result`."""
        if self.search_result is None:
            self.search_result = self.strategy.select(self)
        return dict(self.search_result[0][0])

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _next_data_epoch(self) -> int:
        try:
            progress = self.trainer.fit_loop.epoch_progress
        except (RuntimeError, AttributeError):
            progress = None
        return int(progress.current.processed) if progress is not None else self._data_epoch

    def _at_epoch_end(self) -> bool:
        try:
            current = self.trainer.fit_loop.epoch_progress.current
        except (RuntimeError, AttributeError):
            return False
        return current.processed > current.completed  # batches done, epoch-end hooks running

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._ensure_state()
        # Callbacks saving at a batch's end run before this module's on_train_batch_end; out of place, so that a
        # save from inside a step (before its backward pass) cannot touch the queue the loss holds.
        self._flush_keys(in_place=False)
        if self._at_epoch_end():  # a callback saving at epoch end runs before this module's on_train_epoch_end
            self.epoch_metrics()
        teacher = None if self.teacher is None else {k: v.detach().cpu().clone()
                                                     for k, v in self.teacher.state_dict().items()}
        checkpoint['pinas'] = {
            'teacher': teacher, 'queue': self.queue.state_dict(), 'sampler': self.sampler.state(),
            'torch_rng': torch.get_rng_state(), 'collapse': self.collapse.state_dict(), 'steps': self.steps,
            'sums': dict(self._sums), 'history': [dict(h) for h in self.history],
            'data': {'epoch': self._data_epoch, 'next_epoch': self._next_data_epoch()}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get('pinas')
        if state is None:
            return
        self._ensure_state()
        self._pending_keys = None
        if (state['teacher'] is None) != (self.teacher is None):
            raise ValueError('The checkpoint was trained with mean_teacher='
                             f'{state["teacher"] is not None}; resume with the same setting.')
        if self.teacher is not None:
            self.teacher.load_state_dict(state['teacher'])
        self.queue.load_state_dict(state['queue'])
        self.sampler.load_state(state['sampler'])
        torch.set_rng_state(state['torch_rng'])
        self.collapse.load_state_dict(state['collapse'])
        self.steps, self._sums = int(state['steps']), dict(state['sums'])
        self.history = [dict(h) for h in state['history']]
        # Now, not at epoch start: Lightning builds the resumed epoch's loader iterator before that hook runs.
        self.set_data_epoch(state['data']['next_epoch'])


class _nothing:
    """A do-nothing context manager yielding an empty list (no teacher: nothing to record)."""

    def __enter__(self) -> list:
        return []

    def __exit__(self, *exc: Any) -> None:
        return None
