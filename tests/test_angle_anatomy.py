"""bench.angle_anatomy: path op counts, the op-type angle's ranking, the references, and reading saved supernets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import angle_anatomy as anatomy
from bench.common import load_saved_supernet
from nni_labelfree.benchmarks import nasbench201 as nb
from nni_labelfree.metrics.correlation import kendall_tau
from nni_labelfree.search_spaces import NasBench201Space

from helpers import perturb_supernet

OPS = list(nb.NB201_OPS)


def _cell(*ops):
    return np.array([[OPS.index(op) for op in ops]])


def test_path_op_counts_count_an_edge_once_per_valid_path():
    counts, connected = anatomy.path_op_counts(_cell(*['nor_conv_3x3'] * 6))
    assert connected.tolist() == [True] and counts[0, OPS.index('nor_conv_3x3')] == 8  # paths of 1 + 2 + 3 + 2 edges
    # none on the direct edge 0->3 drops only that path; a cell of none has no path at all.
    counts, _ = anatomy.path_op_counts(_cell('nor_conv_3x3', 'nor_conv_3x3', 'nor_conv_3x3', 'none',
                                             'nor_conv_3x3', 'avg_pool_3x3'))
    assert counts[0, OPS.index('nor_conv_3x3')] == 5 and counts[0, OPS.index('avg_pool_3x3')] == 2
    counts, connected = anatomy.path_op_counts(_cell(*['none'] * 6))
    assert connected.tolist() == [False] and counts.sum() == 0


def test_op_type_angle_ranks_as_the_angle_it_stands_for():
    # Pieces with equal initial and trained norms: cos of the concatenation is the norm-weighted mean cosine.
    op_idx = nb.all_op_indices()
    counts, connected = anatomy.path_op_counts(op_idx)
    cos = {'fixed': 0.8, 'c3': 0.5, 'c1': 0.65, 'pool': 1.0}
    norm = {'fixed': 3.0, 'c3': 1.0, 'c1': 0.4, 'pool': 0.2}
    c3, c1, pool = (counts[:, OPS.index(op)] for op in ('nor_conv_3x3', 'nor_conv_1x1', 'avg_pool_3x3'))
    weighted = norm['fixed'] * cos['fixed'] + c3 * cos['c3'] + c1 * norm['c1'] * cos['c1'] + pool * norm['pool']
    angle = np.arccos(weighted / (norm['fixed'] + c3 + c1 * norm['c1'] + pool * norm['pool']))
    turn = {k: (cos['fixed'] - cos[k]) / (cos['fixed'] - cos['c3']) for k in cos}  # fixed 0, 3x3 1
    score = anatomy.op_type_angle(counts, connected, (norm['fixed'], norm['c1'], norm['pool'], turn['c1'],
                                                      turn['pool']))
    # Rounded: cells tied in one form differ in the last bits of the other.
    assert kendall_tau(score[connected].round(9), angle[connected].round(9)) == pytest.approx(1.0)
    assert np.all(score[~connected] < score[connected].min())


def test_references_are_consistent_and_seeded():
    table = nb.load_nb201_table()
    truth = table.values('cifar10_test')
    counts, connected = anatomy.path_op_counts(nb.all_op_indices())
    oracle, groups = anatomy.composition_oracle_tau(truth, counts, connected)
    assert 1 < groups < nb.NB201_NUM_CELLS and oracle > kendall_tau(nb.op_type_order_score(nb.all_op_indices()), truth)
    first = anatomy.op_type_angle_ceiling(truth, counts, connected, trials=6, refine=4, seed=3)
    assert first == anatomy.op_type_angle_ceiling(truth, counts, connected, trials=6, refine=4, seed=3)
    params = list(first['params'].values())
    assert first['tau'] == pytest.approx(kendall_tau(anatomy.op_type_angle(counts, connected, params), truth),
                                         abs=2e-3)  # params are reported rounded to 4 decimals


def _saved_run(path, seed):
    torch.manual_seed(seed)
    space, initial = perturb_supernet(NasBench201Space(channels=4, cells_per_stage=1))
    (path / 'checkpoints').mkdir(parents=True)
    torch.save({'initial': initial, 'final': {k: v.detach().clone() for k, v in space.named_parameters()}},
               path / 'checkpoints' / 'supernet_final.pt')
    return path


def test_saved_supernets_give_rotations_and_position_agreement(tmp_path):
    a, b = _saved_run(tmp_path / 'a', 0), _saved_run(tmp_path / 'b', 1)
    result = anatomy.run([a, a, b], trials=2, refine=1, seed=0)
    rotations = result['type_rotations'][str(a)]
    assert set(rotations) == {'fixed', 'nor_conv_3x3', 'nor_conv_1x1'}
    assert all(0 < r['cos'] < 1 and r['norm_growth'] > 0 for r in rotations.values())
    cosines = anatomy.edge_cosines(*load_saved_supernet(a))
    assert len(cosines) == 3 * 6 * 2  # cells x edges x conv ops
    assert result['mean_edge_cosines'].keys() == cosines.keys() and result['edge_cosines'][str(a)] == cosines
    for op, pairs in result['position_agreement'].items():
        assert pairs[0] == pytest.approx(1.0)  # a run agrees with itself
        assert pairs[1] < 0.99  # independent random perturbations do not
    assert 'composition oracle' in anatomy.format_table(result)


def test_a_folder_without_a_supernet_is_refused(tmp_path):
    with pytest.raises(SystemExit, match='angle_anatomy: .* has no checkpoints/supernet_final.pt'):
        anatomy.main(['--runs', str(tmp_path), '--trials', '1', '--refine', '0'])
