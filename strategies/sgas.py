"""SGAS: sequential greedy architecture search, as an NNI one-shot strategy (a subclass of NNI's ``DARTS``).

Reference: Guohao Li, Guocheng Qian, Itzel C. Delgadillo, Matthias Muller, Ali Thabet, Bernard Ghanem, "SGAS:
Sequential Greedy Architecture Search", CVPR 2020.

First-order DARTS whose edges are fixed one at a time (scores and schedule: :mod:`.sgas_decisions`):

- every ``LayerChoice`` becomes an :class:`SgasMixedLayer`, NNI's ``DifferentiableMixedLayer`` that, once decided,
  runs its chosen op alone with weight 1 and, once pruned, only its ``none`` op (a zero tensor: no candidate with
  weights or arithmetic runs), so epochs get cheaper as decisions accumulate;
- each architecture step runs on a ``val`` batch, then the weight step on a ``train`` batch (NNI's DARTS loop);
  once every edge is decided the architecture step is skipped (no alpha is left to train);
- decided alphas are frozen; the decision state lives in the Lightning checkpoint, so a resumed search makes the
  same decisions;
- export: the decided architecture (open edges filled as SGAS's ``get_genotype(force=True)``). On
  :class:`~nni_labelfree.search_spaces.DartsSpace` it is a valid genotype: two non-``none`` inputs per node.

The edges to decide are the ``LayerChoice`` labels; labels shared by several cells (DARTS: ``normal/op_3_1`` in
every normal cell) are one edge. Groups ("cell types", decided in the same epoch and normalised together) are the
label prefixes before ``/``. Per-node input limits (pruning) come from the space: ``DartsSpace`` keeps 2 inputs
per node (node of an edge from its ``cell_dags()``); NAS-Bench-201 sums every edge, so all its 6 edges get decided.

Deviations from SGAS's code: the batch size is not increased after decisions (``--batch_increase``, a GPU-memory
measure; Lightning keeps the evaluator's loaders); a space without a ``none`` op gets importance 1 on every edge.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from nni.nas.nn.pytorch import ModelSpace
from nni.nas.oneshot.pytorch.strategy import DARTS
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedLayer

from .darts_base import OrderedDartsModule
from .sgas_decisions import NONE_OP, EdgeSpec, SgasDecisions, _check_int
from .unnas import count_skip_connections

__all__ = ['SGAS', 'SGASModule', 'SgasMixedLayer']

_logger = logging.getLogger(__name__)

_CHECKPOINT_KEY = 'sgas_decisions'


class SgasMixedLayer(DifferentiableMixedLayer):
    """A DARTS mixed edge that SGAS can fix: ``decision`` is ``None`` (mixture), an op name (that op alone, weight
    1) or ``'none'`` (pruned: only the zero op runs)."""

    decision: str | None = None

    def decide(self, op: str | None) -> None:
        """Fix this edge to ``op`` (``None``: back to the mixture)."""
        if op is not None and op not in self.names:
            raise ValueError(f'SgasMixedLayer {self.label!r}: no op {op!r}; expected one of {list(self.names)}.')
        self.decision = op

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.decision is None:
            return super().forward(*args, **kwargs)
        return self[self.decision](*args, **kwargs)


class SGASModule(OrderedDartsModule):
    """The Lightning module behind :class:`SGAS`: DARTS steps, end-of-epoch decisions, checkpointed state.

    Per epoch it logs ``sgas_decided_edges`` (non-``none`` decisions so far, all cell types), ``sgas_pruned_edges``,
    ``sgas_open_edges`` and ``skip_connections`` (in the current export's normal cell); :meth:`sgas_metrics`
    returns the same numbers, and ``decisions.records`` lists every decision with its epoch and score. Decisions
    are made at the epoch's last batch, so every callback's ``on_train_epoch_end`` (metrics, checkpoints) already
    sees that epoch's decision.
    """

    def __init__(self, training_module, strategy: 'SGAS'):
        super().__init__(training_module, arc_learning_rate=strategy.arc_learning_rate,
                         gradient_clip_val=strategy.gradient_clip_val,
                         log_prob_every_n_step=strategy.log_prob_every_n_step,
                         warmup_epochs=strategy.warmup_epochs, penalty=strategy.penalty)
        self.strategy = strategy
        self._decisions: SgasDecisions | None = None

    @property
    def decisions(self) -> SgasDecisions:
        """The decision state (built from the strategy's edges on first use)."""
        if self._decisions is None:
            self._decisions = self.strategy.new_decisions()
        return self._decisions

    def sgas_layers(self) -> Iterable[SgasMixedLayer]:
        """Every mixed edge of the supernet (several per label when cells share labels)."""
        return (m for m in self.supernet_modules() if isinstance(m, SgasMixedLayer))

    def apply_decisions(self) -> None:
        """Push the decision state into every layer and freeze the decided alphas."""
        for layer in self.sgas_layers():
            layer.decide(self.decisions.decided.get(layer.label))
            if layer.label in self.decisions.decided:
                layer._arch_alpha.requires_grad_(False)

    # -- optimisers -----------------------------------------------------------------------------------------------
    def configure_architecture_optimizers(self) -> torch.optim.Optimizer:
        params = self.arch_parameters()
        if not params:
            raise ValueError('SGAS found no architecture parameters: the space has no LayerChoice to search.')
        return torch.optim.Adam(params, self.arc_learning_rate, betas=self.strategy.arc_betas,
                                weight_decay=self.strategy.arc_weight_decay)

    def postprocess_weight_optimizers(self, optimizer: Any) -> Any:
        optimizer = super().postprocess_weight_optimizers(optimizer)
        if self.strategy.weight_decay is not None:
            for opt in _optimizers(optimizer):
                for group in opt.param_groups:
                    group['weight_decay'] = self.strategy.weight_decay
        return optimizer

    # -- training -------------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        if self.strategy.decide and self.decisions.finished:
            # Every alpha is frozen: NNI's architecture step would only spend a forward/backward pass.
            loss = self.training_module.training_step(batch['train'], 2 * batch_idx + 1)
            self.advance_optimization(loss['loss'] if isinstance(loss, dict) else loss, batch_idx,
                                      self.gradient_clip_val)
            self.advance_lr_schedulers(batch_idx)
            return loss
        return super().training_step(batch, batch_idx)

    def on_fit_start(self) -> None:
        if self.strategy.decide:
            self.decisions.check_schedule(self.trainer.max_epochs)
        self.apply_decisions()
        return super().on_fit_start()

    def on_train_epoch_start(self) -> None:
        result = super().on_train_epoch_start()  # epoch dependents; NNI's DARTS re-enables alphas after warm-up
        self._finish_epochs(self.trainer.current_epoch)  # a checkpoint taken before our epoch-end hook ran
        self.apply_decisions()
        return result

    def on_train_batch_end(self, outputs, batch, batch_idx, *args, **kwargs):
        # Decide at the last batch, before any callback's epoch-end hook (metrics, checkpoints) looks at the state.
        if self.trainer.is_last_batch:
            self._finish_epochs(self.trainer.current_epoch + 1)
        return super().on_train_batch_end(outputs, batch, batch_idx, *args, **kwargs)

    def on_train_epoch_end(self) -> None:
        self._finish_epochs(self.trainer.current_epoch + 1)
        for name, value in self.sgas_metrics().items():
            self.log(name, float(value))
        return super().on_train_epoch_end()

    def _finish_epochs(self, completed: int) -> None:
        """Run the end-of-epoch scoring (and due decisions) of every epoch before ``completed`` not yet scored."""
        if not self.strategy.decide:
            return
        while self.decisions.epochs_done < completed:
            new = self.decisions.end_epoch(self.decisions.epochs_done, self.export_probs())
            if new:
                self.apply_decisions()

    def sgas_metrics(self) -> dict[str, float]:
        """``sgas_decided_edges``, ``sgas_pruned_edges``, ``sgas_open_edges`` and ``skip_connections``."""
        decided = self.decisions.decided if self.strategy.decide else {}
        pruned = sum(op == NONE_OP for op in decided.values())
        return {'sgas_decided_edges': len(decided) - pruned, 'sgas_pruned_edges': pruned,
                'sgas_open_edges': len(self.decisions.edges) - len(decided),
                'skip_connections': count_skip_connections(self.export())}

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[_CHECKPOINT_KEY] = self.decisions.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if _CHECKPOINT_KEY in checkpoint:
            self.decisions.load_state_dict(checkpoint[_CHECKPOINT_KEY])
            self.apply_decisions()

    # -- export ---------------------------------------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """SGAS: the decided architecture. Without decisions (UnrealNAS's ``algorithm='darts'``): the space's
        ``arch_from_probs`` (DARTS genotype derivation) if it has one, else the argmax of every choice."""
        probs = self.export_probs()
        if self.strategy.decide:
            return self.decisions.export(probs)
        space = self.model
        if callable(getattr(space, 'arch_from_probs', None)):
            return space.arch_from_probs(probs)
        return super().export()


def _optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    """The optimisers inside a Lightning ``configure_optimizers`` return value."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    if isinstance(optimizer, dict):
        return _optimizers(optimizer.get('optimizer'))
    if isinstance(optimizer, (list, tuple)):
        return [opt for item in optimizer for opt in _optimizers(item)]
    return []



class SGAS(DARTS):
    """SGAS (Li et al., CVPR 2020) as a drop-in NNI one-shot strategy.

    ``NasExperiment(space, Classification(...), SGAS()).run()`` searches with the evaluator's labels (its
    ``training_step`` computes the loss; alphas step on the validation loader, weights on the training loader, as
    NNI's DARTS). Any label source works: wrap the loaders' datasets (random labels, pretext targets, ...).

    Parameters
    ----------
    criterion
        1: edge importance x selection certainty; 2: x selection stability (histogram intersection with the last
        ``history_size`` epochs). SGAS's code defaults to 1.
    decision_warmup
        0-based epoch at whose end the first decision falls (SGAS: 9, i.e. after 10 epochs).
    decision_freq
        Epochs between decisions (SGAS CNN: 5; its README suggests 7 for stability).
    history_size
        Criterion 2's window (SGAS: 4).
    decisions_per_cell
        Decisions per cell type; ``None`` (default): all the space needs (DARTS: 2 inputs x 4 nodes = 8;
        NAS-Bench-201: 6). Open edges left at export are filled as SGAS's ``get_genotype(force=True)``.
    inputs_per_node
        Inputs a node keeps (edges beyond are pruned); ``'auto'``: the space's ``inputs_per_node`` attribute if any,
        2 for :class:`~nni_labelfree.search_spaces.DartsSpace`, else no pruning.
    arc_learning_rate, arc_betas, arc_weight_decay
        Adam for the alphas (SGAS/DARTS: 3e-4, (0.5, 0.999), 1e-3).
    weight_decay
        If given, overrides the weight decay of the evaluator's weight optimiser (SGAS: 3e-4 with SGD; set the
        optimiser itself in the evaluator, e.g. ``Classification(optimizer=torch.optim.SGD, ...)``).
    alpha_init
        ``'random'``: ``1e-3 * N(0, 1)`` drawn from ``seed`` (DARTS/SGAS); ``'zeros'`` (UnrealNAS).
    seed
        Seeds the alpha initialisation.
    gradient_clip_val
        Gradient-norm clip of the weight step (SGAS: 5).
    warmup_epochs
        NNI DARTS's warm-up: epochs during which the alphas do not move (SGAS: 0).
    **kwargs
        Other arguments of NNI's :class:`~nni.nas.oneshot.pytorch.strategy.DARTS`.
    """

    decide = True
    """Whether edges get decided (``False``: plain first-order DARTS through the same module, UnrealNAS's
    ``algorithm='darts'``)."""

    def __init__(self, *, criterion: int = 1, decision_warmup: int = 9, decision_freq: int = 5,
                 history_size: int = 4, decisions_per_cell: int | None = None, inputs_per_node: int | str | None = 'auto',
                 arc_learning_rate: float = 3e-4, arc_betas: tuple[float, float] = (0.5, 0.999),
                 arc_weight_decay: float = 1e-3, weight_decay: float | None = None, alpha_init: str = 'random',
                 seed: int = 0, gradient_clip_val: float | None = 5.0, warmup_epochs: int = 0, **kwargs: Any):
        super().__init__(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         warmup_epochs=_check_int('warmup_epochs', warmup_epochs, 0), **kwargs)
        if alpha_init not in ('random', 'zeros'):
            raise ValueError(f"SGAS: alpha_init must be 'random' or 'zeros', got {alpha_init!r}.")
        if inputs_per_node not in ('auto', None):
            _check_int('inputs_per_node', inputs_per_node, 1)
        self.schedule = {'criterion': criterion, 'decision_warmup': decision_warmup, 'decision_freq': decision_freq,
                         'history_size': history_size, 'decisions_per_group': decisions_per_cell}
        SgasDecisions([], **self.schedule)  # validates the schedule now, not at the first epoch
        if decision_warmup < warmup_epochs:
            _logger.warning('SGAS: the first decision (end of epoch %d) comes before the alphas start to move (epoch '
                            '%d): it is made on initial alphas.', decision_warmup, warmup_epochs)
        self.inputs_per_node = inputs_per_node
        self.arc_betas = tuple(float(b) for b in arc_betas)
        self.arc_weight_decay = float(arc_weight_decay)
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        self.alpha_init, self.seed = alpha_init, _check_int('seed', seed, 0)
        if decisions_per_cell is not None:
            _check_int('decisions_per_cell', decisions_per_cell, 1)
        self._edges: tuple[EdgeSpec, ...] | None = None
        self._resolved_inputs: int | None = None
        self._module: SGASModule | None = None

    # -- model ----------------------------------------------------------------------------------------------------
    def default_mutation_hooks(self) -> list:
        return [SgasMixedLayer.mutate, *super().default_mutation_hooks()]

    def mutate_model(self, model: ModelSpace) -> ModelSpace:
        """The DARTS supernet of ``model`` with :class:`SgasMixedLayer` edges; records the edges to decide."""
        if not isinstance(model, ModelSpace):
            raise TypeError(f'SGAS searches an NNI ModelSpace, got {type(model).__name__}.')
        labels = model.simplify()
        if not labels:
            raise ValueError(f'{type(model).__name__} has no LayerChoice: there is nothing to search.')
        nodes = _edge_nodes(model)
        inputs = self._resolve_inputs_per_node(model)
        supernet = super().mutate_model(model)
        self._initialize_alphas()
        self._edges = _collect_edges(supernet, labels, nodes if inputs else {}, inputs)
        self._resolved_inputs = inputs
        self.new_decisions()  # raises now if decisions_per_cell asks for more edges than exist
        return supernet

    def _resolve_inputs_per_node(self, model: ModelSpace) -> int | None:
        if self.inputs_per_node != 'auto':
            return self.inputs_per_node
        declared = getattr(model, 'inputs_per_node', None)
        if declared is not None:
            return int(declared)
        from nni_labelfree.search_spaces import DartsSpace
        return 2 if isinstance(model, DartsSpace) else None

    def _initialize_alphas(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for label in sorted(self._arch_parameters):
                alpha = self._arch_parameters[label]
                if self.alpha_init == 'zeros':
                    alpha.zero_()
                else:
                    alpha.copy_(torch.randn(alpha.shape, generator=generator) * 1e-3)

    def new_decisions(self) -> SgasDecisions:
        """A fresh decision state for the edges of the mutated space."""
        if self._edges is None:
            raise RuntimeError('SGAS has no supernet yet: call mutate_model(space) first (NasExperiment does).')
        return SgasDecisions(self._edges, inputs_per_node=self._resolved_inputs, **self.schedule)

    # -- evaluator ------------------------------------------------------------------------------------------------
    def configure_oneshot_module(self, training_module) -> SGASModule:
        self._module = SGASModule(training_module, self)
        return self._module

    def mutate_evaluator(self, evaluator):
        """NNI's one-shot wrapping, after checking that the decision schedule fits in the trainer's epochs."""
        if self.decide:
            self.new_decisions().check_schedule(getattr(getattr(evaluator, 'trainer', None), 'max_epochs', None))
        return super().mutate_evaluator(evaluator)


def _edge_nodes(model: ModelSpace) -> dict[str, int]:
    """Label -> destination node, from the space's ``cell_dags()`` (empty if it has none)."""
    if not callable(getattr(model, 'cell_dags', None)):
        return {}
    return {label: dst for dag in model.cell_dags() for _, dst, label, _ in dag.edges}


def _collect_edges(supernet: nn.Module, labels: Mapping[str, Any], nodes: Mapping[str, int],
                   inputs_per_node: int | None) -> tuple[EdgeSpec, ...]:
    edges: dict[str, EdgeSpec] = {}
    for module in supernet.modules():
        label = str(module.label) if isinstance(module, SgasMixedLayer) else None  # NNI's label is a str subclass
        if label is not None and label not in edges:
            group = label.rsplit('/', 1)[0] if '/' in label else ''
            ops = tuple(str(op) if isinstance(op, str) else op for op in module.names)
            edges[label] = EdgeSpec(label, ops, group, nodes.get(label))
    missing = [label for label in labels if label not in edges]
    if missing:
        raise ValueError(f'SGAS decides LayerChoice edges only, but {missing[0]!r} is a '
                         f'{type(labels[missing[0]]).__name__} (an InputChoice or value choice). Express input '
                         'choices as LayerChoice edges with a `none` op, as DartsSpace does.')
    if inputs_per_node is not None:
        bad = [e.label for e in edges.values() if e.node is None or NONE_OP not in e.ops]
        if bad:
            raise ValueError(f'SGAS: inputs_per_node={inputs_per_node} prunes edges per node, which needs every edge '
                             f'in the space\'s cell_dags() and a `none` op; {bad[0]!r} lacks one. Pass '
                             'inputs_per_node=None to decide every edge without pruning.')
    return tuple(edges.values())
