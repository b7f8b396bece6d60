"""The decomposed angle equals the naive concatenated-vector definition, and ranks NAS-Bench-201 fully."""
import numpy as np
import pytest
import torch
from torch import nn

from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace
from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS, all_op_indices, arch_to_string
from nni_labelfree.metrics.angle import (AnglePolicy, ChoiceAngleScorer, PathAngleScorer, angle_scorer,
                                         parameter_snapshot)
from nni_labelfree.search_spaces import NasBench201Space

from helpers import perturb_supernet

POLICIES = [AnglePolicy(), AnglePolicy(fixed='none'), AnglePolicy(pool='const4d', skip='identity'),
            AnglePolicy(fixed='none', pool='empty', skip='identity')]


def _perturbed_supernet(space, seed=0):
    torch.manual_seed(seed)
    return perturb_supernet(space)


@pytest.fixture(scope='module')
def nb201():
    return _perturbed_supernet(NasBench201Space(channels=4, cells_per_stage=2))


def _cos(angle):
    return np.cos(angle)


@pytest.mark.parametrize('policy', POLICIES, ids=lambda p: f'{p.fixed}-{p.pool}-{p.skip}')
def test_path_angle_matches_naive_definition(nb201, policy):
    space, initial = nb201
    scorer = angle_scorer(space, initial, policy=policy)
    assert isinstance(scorer, PathAngleScorer)
    encoded = scorer.all_encodings()
    angles = scorer.angles(encoded)
    for row in np.random.default_rng(0).choice(len(encoded), 60, replace=False):
        arch = scorer.decode(encoded[row])
        # Compare cosines: arccos is ill-conditioned near 0, where identical vectors land.
        assert _cos(angles[row]) == pytest.approx(_cos(scorer.naive_angle(arch)), abs=1e-10), arch


def test_path_angle_rlnas_conventions(nb201):
    space, initial = nb201
    scorer = angle_scorer(space, initial)
    angles = scorer.angles(all_op_indices())
    disconnected = ~_has_valid_path(all_op_indices())
    assert disconnected.sum() == 341  # cells with no none-free input->output path
    assert np.all(angles[disconnected] == 0.0)
    assert np.all(angles[~disconnected] > 0.0)
    # skip is empty in RLNAS's NAS-Bench-201 vector: replacing a skip edge off every path by none changes nothing.
    base = {label: 'nor_conv_3x3' for label in NB201_LABELS}
    assert scorer.angle(base) > 0


def _has_valid_path(op_idx):
    from nni_labelfree.benchmarks.nasbench201 import valid_path_mask
    return valid_path_mask(op_idx).any(axis=1)


def test_encoding_order_is_the_benchmark_order(nb201):
    space, initial = nb201
    scorer = angle_scorer(space, initial)
    assert tuple(scorer.labels) == NB201_LABELS
    assert np.array_equal(scorer.all_encodings(), all_op_indices())
    encoded = scorer.all_encodings()
    strings = {arch_to_string(scorer.decode(row)) for row in encoded}
    assert len(strings) == 15625


def test_untrained_supernet_has_zero_angles():
    space = NasBench201Space(channels=8, cells_per_stage=1)
    RandomOneShot().mutate_model(space)
    initial = parameter_snapshot(space)
    angles = angle_scorer(space, initial).angles(all_op_indices())
    assert np.allclose(angles, 0.0, atol=1e-6)


class TinySpace(ModelSpace):
    """A chain space with a shared label, an InputChoice and a parameter-free candidate."""

    def __init__(self):
        super().__init__()
        self.conv1 = LayerChoice({'k3': nn.Conv2d(3, 4, 3, padding=1), 'k5': nn.Conv2d(3, 4, 5, padding=2)},
                                 label='first')
        self.conv2 = LayerChoice({'k1': nn.Conv2d(4, 4, 1), 'pool': nn.AvgPool2d(3, 1, 1),
                                  'skip': nn.Identity()}, label='second')
        self.conv3 = LayerChoice({'k1': nn.Conv2d(4, 4, 1), 'pool': nn.AvgPool2d(3, 1, 1),
                                  'skip': nn.Identity()}, label='second')
        self.pick = InputChoice(2, 1, label='pick')
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        a = self.conv1(x)
        b = self.conv3(self.conv2(a))
        return self.head(self.pick([a, b]).mean((2, 3)))


@pytest.mark.parametrize('policy', POLICIES, ids=lambda p: f'{p.fixed}-{p.pool}-{p.skip}')
def test_choice_angle_matches_naive_definition(policy):
    space, initial = _perturbed_supernet(TinySpace(), seed=1)
    scorer = angle_scorer(space, initial, policy=policy)
    assert isinstance(scorer, ChoiceAngleScorer)
    assert scorer.choices == {'first': ['k3', 'k5'], 'second': ['k1', 'pool', 'skip'], 'pick': [(0,), (1,)]}
    encoded = scorer.all_encodings()
    angles = scorer.angles(encoded)
    for row, angle in zip(encoded, angles):
        arch = scorer.decode(row)
        assert _cos(angle) == pytest.approx(_cos(scorer.naive_angle(arch)), abs=1e-10)
    assert len(set(np.round(angles, 12))) > 1


def test_path_aware_requires_cell_dags():
    space, initial = _perturbed_supernet(TinySpace())
    with pytest.raises(ValueError, match='cell_dags'):
        angle_scorer(space, initial, path_aware=True)


def test_bad_policy_and_snapshot_are_refused():
    with pytest.raises(ValueError, match='pool'):
        AnglePolicy(pool='3d')
    space, initial = _perturbed_supernet(TinySpace())
    with pytest.raises(ValueError, match='initial snapshot lacks'):
        ChoiceAngleScorer(space, {k: v for k, v in list(initial.items())[1:]})
    scorer = ChoiceAngleScorer(space, initial)
    with pytest.raises(ValueError, match='does not fit this space'):
        scorer.angle({'first': 'k7', 'second': 'k1'})


# --- edges='cell_mean' ------------------------------------------------------------------------------------------
def _reference_cell_mean_angle(space, initial, arch):
    """The cell-mean angle from its definition, parameters read one by one: every op on a valid path adds the mean,
    over its cell's edges, of that op's (<w0, wT>, |w0|^2, |wT|^2); fixed layers once. Pool and skip add nothing
    (``pool='empty'``)."""
    trained = dict(space.named_parameters())

    def stats(prefix):
        out = np.zeros(3)
        for name, w in trained.items():
            if name.startswith(prefix):
                a, b = initial[name].double().flatten(), w.detach().double().flatten()
                out += (float(a @ b), float(a @ a), float(b @ b))
        return out

    total = stats('') - sum(stats(m + '.') for _, m in _edge_modules(space))  # fixed layers
    any_path = False
    for dag in space.cell_dags():
        for path in dag.paths():
            ops = [arch[dag.edges[k][2]] for k in path]
            if 'none' in ops:
                continue
            any_path = True
            for op in ops:
                total += np.mean([stats(f'{module}.{op}.') for _, _, _, module in dag.edges], axis=0)
    if not any_path:
        return 0.0
    return float(np.arccos(np.clip(total[0] / np.sqrt(total[1] * total[2]), -1, 1)))


def _edge_modules(space):
    return [(label, module) for dag in space.cell_dags() for _, _, label, module in dag.edges]


def test_cell_mean_angle_matches_its_definition(nb201):
    space, initial = nb201
    scorer = angle_scorer(space, initial, policy=AnglePolicy(pool='empty', edges='cell_mean'))
    encoded = scorer.all_encodings()
    angles = scorer.angles(encoded)
    for row in np.random.default_rng(1).choice(len(encoded), 25, replace=False):
        arch = scorer.decode(encoded[row])
        assert _cos(angles[row]) == pytest.approx(_cos(_reference_cell_mean_angle(space, initial, arch)),
                                                  abs=1e-10), arch
        assert scorer.angle(arch) == pytest.approx(angles[row], abs=1e-12)  # the one-arch gather path agrees


def test_cell_mean_angle_ignores_which_edge_holds_an_op(nb201):
    # Edges 0->2 and 1->3 each lie on one input->output path: swapping their ops keeps which ops lie on valid paths
    # (and how often), so the cell-mean angle is unchanged while each edge's own weights (edges='own') differ.
    space, initial = nb201
    own = angle_scorer(space, initial)
    mean = angle_scorer(space, initial, policy=AnglePolicy(edges='cell_mean'))
    base = {label: 'nor_conv_3x3' for label in NB201_LABELS}
    e20, e31 = (next(label for label in NB201_LABELS if label.endswith(edge)) for edge in ('2_0', '3_1'))
    first = {**base, e20: 'nor_conv_1x1', e31: 'avg_pool_3x3'}
    swapped = {**base, e20: 'avg_pool_3x3', e31: 'nor_conv_1x1'}
    assert mean.angle(first) == pytest.approx(mean.angle(swapped), abs=1e-12)
    assert abs(own.angle(first) - own.angle(swapped)) > 1e-6
    # ... but which ops: a 3x3 in place of the 1x1 does change it.
    assert abs(mean.angle({**first, e20: 'nor_conv_3x3'}) - mean.angle(first)) > 1e-6


def test_cell_mean_angle_needs_cells():
    space, initial = _perturbed_supernet(TinySpace())
    policy = AnglePolicy(edges='cell_mean')
    with pytest.raises(ValueError, match='cell_dags'):
        angle_scorer(space, initial, policy=policy)
    with pytest.raises(ValueError, match='edges="own"'):
        ChoiceAngleScorer(space, initial, policy=policy)
    with pytest.raises(ValueError, match='edges'):
        AnglePolicy(edges='mean')


def test_cell_mean_angle_has_no_naive_concatenation(nb201):
    space, initial = nb201
    scorer = angle_scorer(space, initial, policy=AnglePolicy(edges='cell_mean'))
    with pytest.raises(ValueError, match=r'edges="own"\) only'):
        scorer.naive_angle({label: 'nor_conv_3x3' for label in NB201_LABELS})
    with pytest.raises(ValueError, match='path_aware=False'):
        angle_scorer(space, initial, policy=AnglePolicy(edges='cell_mean'), path_aware=False)


def test_cell_mean_changes_nothing_where_every_edge_holds_the_same_weightless_op(nb201):
    # Pool and skip surrogates are the same constant on every edge of a cell: averaging them is the identity.
    space, initial = nb201
    for policy in (AnglePolicy(), AnglePolicy(skip='identity'), AnglePolicy(pool='const4d')):
        own = angle_scorer(space, initial, policy=policy)
        mean = angle_scorer(space, initial, policy=AnglePolicy(policy.fixed, policy.pool, policy.skip, 'cell_mean'))
        for op in ('avg_pool_3x3', 'skip_connect'):
            arch = {label: op for label in NB201_LABELS}
            assert mean.angle(arch) == pytest.approx(own.angle(arch), abs=1e-12), (policy, op)


class MixedCellSpace(ModelSpace):
    """One cell whose two edges offer different candidates."""

    def __init__(self):
        super().__init__()
        self.a = LayerChoice({'conv': nn.Conv2d(3, 3, 1), 'skip': nn.Identity()}, label='a')
        self.b = LayerChoice({'conv': nn.Conv2d(3, 3, 1), 'pool': nn.AvgPool2d(3, 1, 1)}, label='b')
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.b(self.a(x)).mean((2, 3)))

    def cell_dags(self):
        from nni_labelfree.search_spaces.nasbench201 import CellDAG
        return [CellDAG(edges=((0, 1, 'a', 'a'), (1, 2, 'b', 'b')), sources=(0,), sinks=(2,))]


def test_cell_mean_refuses_a_cell_whose_edges_offer_different_candidates():
    space, initial = _perturbed_supernet(MixedCellSpace())
    assert angle_scorer(space, initial).angle({'a': 'conv', 'b': 'pool'}) > 0  # the own-weights angle is fine
    with pytest.raises(ValueError, match=r"edges \['a', 'b'\] has 2 different candidate lists.*edges=\"own\""):
        angle_scorer(space, initial, policy=AnglePolicy(edges='cell_mean'))
