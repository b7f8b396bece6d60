"""SGAS: exact scores, the decision schedule, pruned/decided edges not computed, valid export, checkpoint resume."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
from pytorch_lightning import Callback
from torch import nn
from torch.utils.data import TensorDataset

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS, NB201_OPS
from nni_labelfree.search_spaces import DartsSpace, NasBench201Space
from nni_labelfree.search_spaces.darts import DARTS_EDGES, DARTS_LABELS, DARTS_OPS, darts_sample_is_valid, \
    genotype_from_arch
from nni_labelfree.strategies import SGAS
from nni_labelfree.strategies.sgas import SgasMixedLayer
from nni_labelfree.strategies.sgas_decisions import EdgeSpec, SgasDecisions, edge_scores, normalize


def _data(n=32, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g))


def _evaluator(epochs, dataset=None, batch=16, **trainer):
    dataset = dataset or _data()
    return Classification(train_dataloaders=DataLoader(dataset, batch_size=batch),
                          val_dataloaders=DataLoader(dataset, batch_size=batch), num_classes=10, learning_rate=0.01,
                          max_epochs=epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                          enable_model_summary=False, **trainer)


def _darts_edges():
    return [EdgeSpec(label, DARTS_OPS, label.split('/')[0], int(label.split('_')[1])) for label in DARTS_LABELS]


def _random_probs(rng, edges):
    out = {}
    for edge in edges:
        p = rng.dirichlet(np.ones(len(edge.ops)))
        out[edge.label] = dict(zip(edge.ops, p))
    return out


# -- scores -----------------------------------------------------------------------------------------------------
def test_scores_follow_sgas_formulas():
    probs = [np.array([0.5, 0.25, 0.25]), np.array([0.1, 0.9, 0.0]), np.array([0.2, 0.4, 0.4])]
    histories = [[np.array([0.5, 0.5])], [np.array([1.0, 0.0]), np.array([0.0, 1.0])], []]
    got = edge_scores(probs, [0, 0, 0], histories)
    assert np.allclose(got['importance'], [0.5, 0.9, 0.8])
    assert np.allclose(got['certainty'], [0.0, 1.0, 0.0])  # uniform non-none -> entropy log 2 -> certainty 0
    assert np.allclose(got['stability'], [1.0, 0.5, 0.0])  # empty history -> 0
    expected = normalize([0.5, 0.9, 0.8]) * normalize([0.0, 1.0, 0.0]) * normalize([1.0, 0.5, 0.0])
    assert np.allclose(got['score'], expected) and np.allclose(got['score'], [0, 0.5, 0])
    criterion1 = edge_scores(probs, [0, 0, 0])
    assert 'stability' not in criterion1 and np.allclose(criterion1['score'], [0, 1, 0])
    p = np.array([0.3, 0.2, 0.5])
    certainty = 1 - (-(0.2 / 0.7) * math.log(0.2 / 0.7) - (0.5 / 0.7) * math.log(0.5 / 0.7)) / math.log(2)
    assert edge_scores([p, p * 0 + 1 / 3], [0, 0])['certainty'][0] == pytest.approx(certainty)
    assert np.array_equal(normalize(np.array([2.0, 2.0])), [0.0, 0.0])


def test_history_is_appended_after_scoring_and_capped():
    edges = [EdgeSpec('cell/a', ('none', 'x', 'y'), 'cell'), EdgeSpec('cell/b', ('none', 'x', 'y'), 'cell')]
    decisions = SgasDecisions(edges, criterion=2, decision_warmup=100, history_size=2)
    probs = {'cell/a': {'none': 0.2, 'x': 0.4, 'y': 0.4}, 'cell/b': {'none': 0.5, 'x': 0.5, 'y': 0.0}}
    for epoch in range(3):
        decisions.end_epoch(epoch, probs)
    assert [len(h) for h in decisions.history.values()] == [2, 2]
    assert np.allclose(decisions.history['cell/b'][0], [1.0, 0.0])


# -- schedule, pruning, export (no training) ----------------------------------------------------------------------
def test_darts_schedule_decides_one_edge_per_cell_type_and_prunes_to_two_inputs():
    edges = _darts_edges()
    decisions = SgasDecisions(edges, criterion=2, decision_warmup=3, decision_freq=2, inputs_per_node=2)
    assert decisions.targets == {'normal': 8, 'reduce': 8} and decisions.last_decision_epoch == 3 + 2 * 7
    rng = np.random.default_rng(0)
    for epoch in range(20):
        probs = _random_probs(rng, edges)
        new = [r for r in decisions.end_epoch(epoch, probs) if not r['pruned']]
        due = 3 <= epoch <= 17 and (epoch - 3) % 2 == 0
        assert Counter(r['label'].split('/')[0] for r in new) == (Counter(normal=1, reduce=1) if due else Counter())
        for record in new:  # the decided op is the edge's strongest non-none op
            real = {op: p for op, p in probs[record['label']].items() if op != 'none'}
            assert record['op'] == max(real, key=real.get)
    assert decisions.finished and len(decisions.decided) == 28
    arch = decisions.export(_random_probs(rng, edges))
    assert darts_sample_is_valid(arch) and arch == decisions.decided
    assert len(genotype_from_arch(arch)['normal']) == 8


def test_export_before_the_last_decision_is_a_valid_genotype():
    edges = _darts_edges()
    decisions = SgasDecisions(edges, decision_warmup=0, decision_freq=1, inputs_per_node=2)
    rng = np.random.default_rng(1)
    for epoch in range(3):
        decisions.end_epoch(epoch, _random_probs(rng, edges))
    arch = decisions.export(_random_probs(rng, edges))
    assert darts_sample_is_valid(arch)
    assert all(arch[label] == op for label, op in decisions.decided.items())


def test_edges_are_never_decided_to_none_even_when_none_dominates():
    edges = [EdgeSpec(f'cell/{i}', ('none', 'a', 'b'), 'cell') for i in range(3)]
    decisions = SgasDecisions(edges, decision_warmup=0, decision_freq=1)
    real = [(0.004, 0.016), (0.012, 0.008), (0.015, 0.005)]
    probs = {e.label: {'none': 0.98, 'a': a, 'b': b} for e, (a, b) in zip(edges, real)}
    for epoch in range(3):
        decisions.end_epoch(epoch, probs)
    assert decisions.decided == {'cell/0': 'b', 'cell/1': 'a', 'cell/2': 'a'} and decisions.finished


# -- the supernet: decided edges run one op, pruned edges none -----------------------------------------------------
def test_decided_and_pruned_edges_stop_being_computed():
    torch.manual_seed(0)
    strategy = SGAS()
    supernet = strategy.mutate_model(DartsSpace(width=4, num_cells=3))
    calls = Counter()
    layers = [m for m in supernet.modules() if isinstance(m, SgasMixedLayer)]
    for layer in layers:
        for name in layer.names:
            layer[name].register_forward_hook(lambda *_, key=(id(layer), name): calls.update([key]))
    decided = {'normal/op_2_0': 'sep_conv_3x3', 'normal/op_2_1': 'skip_connect', 'reduce/op_3_2': 'dil_conv_5x5'}
    pruned = ['normal/op_3_0', 'reduce/op_5_4']
    for layer in layers:
        layer.decide(decided.get(layer.label, 'none' if layer.label in pruned else None))
    supernet.eval()
    with torch.no_grad():
        supernet(torch.randn(2, 3, 16, 16))
    for layer in layers:
        ran = {name for name in layer.names if calls[(id(layer), name)]}
        if layer.label in decided:
            assert ran == {decided[layer.label]}
        elif layer.label in pruned:
            assert ran == {'none'}  # only the zero op: no candidate with weights or arithmetic
        else:
            assert ran == set(DARTS_OPS)
    # A decided edge is its op alone, with weight 1.
    layer = next(m for m in layers if m.label == 'normal/op_2_0')
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(layer(x), layer['sep_conv_3x3'](x))
    with pytest.raises(ValueError, match='no op'):
        layer.decide('conv_7x7')


class CandidateCalls(Callback):
    """Forward calls of candidate modules (children of mixed layers) per training epoch."""

    def __init__(self):
        self.per_epoch, self._count = [], 0

    def on_fit_start(self, trainer, pl_module):
        for layer in pl_module.sgas_layers():
            for name in layer.names:
                layer[name].register_forward_hook(self._hook)

    def _hook(self, *_):
        self._count += 1

    def on_train_epoch_end(self, trainer, pl_module):
        self.per_epoch.append(self._count)
        self._count = 0


def test_sgas_on_darts_space_exports_a_valid_genotype_and_epochs_get_cheaper():
    torch.manual_seed(0)
    calls = CandidateCalls()
    strategy = SGAS(decision_warmup=0, decision_freq=1, criterion=2)
    experiment = NasExperiment(DartsSpace(width=4, num_cells=3), _evaluator(9, _data(8), batch=8, callbacks=[calls]),
                               strategy)
    experiment.run()
    [arch] = experiment.export_top_models(formatter='dict')
    assert darts_sample_is_valid(arch)
    records = strategy.oneshot_module.decisions.records
    assert [r['epoch'] for r in records if not r['pruned'] and r['label'].startswith('normal/')] == list(range(8))
    # Epoch 0: arch + weight step through 3 cells x 14 edges x 8 ops; the last epoch: only the weight step, 8 ops
    # (plus `none` on the 6 pruned edges) per cell.
    assert calls.per_epoch[0] == 2 * 3 * 14 * 8
    assert calls.per_epoch[-1] == 3 * 14
    assert all(a >= b for a, b in zip(calls.per_epoch, calls.per_epoch[1:]))


# -- end to end on NAS-Bench-201 ---------------------------------------------------------------------------------
def _alphas(module):
    return {m.label: m._arch_alpha.detach().clone() for m in module.sgas_layers()}


class AlphaLog(Callback):
    def __init__(self):
        self.alphas = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.alphas.append(_alphas(pl_module))


def test_sgas_on_nb201_follows_the_schedule_and_freezes_decided_alphas():
    torch.manual_seed(0)
    log = AlphaLog()
    strategy = SGAS(decision_warmup=1, decision_freq=2)
    experiment = NasExperiment(NasBench201Space(channels=4, cells_per_stage=1), _evaluator(13, callbacks=[log]),
                               strategy)
    experiment.run()
    module = strategy.oneshot_module
    records = module.decisions.records
    assert [r['epoch'] for r in records] == [1, 3, 5, 7, 9, 11] and not any(r['pruned'] for r in records)
    assert all(r['op'] != 'none' for r in records)
    for record in records:  # frozen from its decision on
        frozen = [a[record['label']] for a in log.alphas[record['epoch']:]]
        assert all(torch.equal(frozen[0], a) for a in frozen[1:])
        assert not torch.equal(log.alphas[0][record['label']], log.alphas[record['epoch']][record['label']])
    [arch] = experiment.export_top_models(formatter='dict')
    assert set(arch) == set(NB201_LABELS) and set(arch.values()) <= set(NB201_OPS) - {'none'}
    assert arch == {r['label']: r['op'] for r in records}
    metrics = module.trainer.callback_metrics
    assert metrics['sgas_decided_edges'] == 6 and metrics['sgas_open_edges'] == 0


def _by_hand(space, evaluator, strategy):
    supernet = strategy.mutate_model(space)
    return supernet, strategy.mutate_evaluator(evaluator)


class SaveAt(Callback):
    """A plain (non-monitoring) callback saving at the end of one epoch, before the module's own epoch-end hook."""

    def __init__(self, epoch, path):
        self.epoch, self.path = epoch, path

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def test_decision_state_survives_a_checkpoint_round_trip(tmp_path):
    path = tmp_path / 'epoch4.ckpt'
    torch.manual_seed(0)
    supernet, lightning = _by_hand(NasBench201Space(channels=4, cells_per_stage=1),
                                   _evaluator(12, callbacks=[SaveAt(4, path)]), SGAS(decision_warmup=1, criterion=2,
                                                                                     decision_freq=2))
    lightning.evaluate(supernet)
    reference = lightning.module
    saved = torch.load(path, weights_only=False)['sgas_decisions']
    torch.save(saved, tmp_path / 'state.pt')  # plain values: readable without unpickling code
    assert torch.load(tmp_path / 'state.pt', weights_only=True) == saved
    assert [r['epoch'] for r in saved['records']] == [1, 3]  # the epoch-3 decision is in, epoch 5 not yet

    torch.manual_seed(123)  # other initial weights: everything must come from the checkpoint
    supernet, lightning = _by_hand(NasBench201Space(channels=4, cells_per_stage=1), _evaluator(12),
                                   SGAS(decision_warmup=1, criterion=2, decision_freq=2))
    lightning.fit_kwargs.update(ckpt_path=str(path), weights_only=False)  # NNI's evaluator hparams pickle labels
    lightning.evaluate(supernet)
    resumed = lightning.module
    assert resumed.decisions.records == reference.decisions.records
    assert resumed.export() == reference.export()
    assert all(torch.equal(a, b) for a, b in zip(_alphas(resumed).values(), _alphas(reference).values()))


# -- bad input ----------------------------------------------------------------------------------------------------
def test_bad_input_is_refused():
    with pytest.raises(ValueError, match='criterion'):
        SGAS(criterion=3)
    with pytest.raises(ValueError, match='decision_freq'):
        SGAS(decision_freq=0)
    with pytest.raises(ValueError, match='only 6 decidable edges'):
        SGAS(decisions_per_cell=7).mutate_model(NasBench201Space(channels=4, cells_per_stage=1))
    with pytest.raises(ValueError, match='only 8 decidable edges'):
        SGAS(decisions_per_cell=9).mutate_model(DartsSpace(width=4, num_cells=3))
    strategy = SGAS()  # 6 NB201 decisions from epoch 9, every 5: the last at the end of epoch 34
    strategy.mutate_model(NasBench201Space(channels=4, cells_per_stage=1))
    with pytest.raises(ValueError, match='max_epochs to >= 35'):
        strategy.mutate_evaluator(_evaluator(20))
    with pytest.raises(ValueError, match='inputs_per_node'):
        SGAS(inputs_per_node=2).mutate_model(Toy())  # no cell_dags(): no node to prune by
    with pytest.raises(ValueError, match='LayerChoice edges only'):
        SGAS().mutate_model(Toy(with_input_choice=True))


class Toy(ModelSpace):
    def __init__(self, with_input_choice=False):
        super().__init__()
        self.conv = LayerChoice({'none': nn.Identity(), 'conv': nn.Conv2d(3, 3, 1)}, label='conv')
        self.pick = InputChoice(2, 1, label='pick') if with_input_choice else None
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        x = self.conv(x)
        if self.pick is not None:
            x = self.pick([x, x])
        return self.fc(x.mean((2, 3)))


def test_fewer_decisions_and_no_pruning_are_options():
    strategy = SGAS(decisions_per_cell=3, inputs_per_node=None)
    strategy.mutate_model(DartsSpace(width=4, num_cells=3))
    decisions = strategy.new_decisions()
    assert decisions.targets == {'normal': 3, 'reduce': 3} and decisions.inputs_per_node is None
    assert {e.group for e in decisions.edges} == {'normal', 'reduce'} and len(decisions.edges) == 2 * len(DARTS_EDGES)
