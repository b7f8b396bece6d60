"""NAS-Bench-201 encodings, structural baselines and the packaged accuracy table."""
import csv
import gzip
import itertools

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from nni_labelfree.benchmarks import (
    NB201_EDGES, NB201_LABELS, NB201_OPS, NB201_PATHS, all_op_indices, arch_to_op_indices, arch_to_string,
    count_convs_on_valid_paths, edges_on_valid_paths, flat_index, from_nni_hub_arch, load_nb201_table,
    nb201_choices, op_indices_to_strings, op_type_order_score, params_on_valid_paths, string_to_arch,
    valid_path_mask,
)

DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
CSV = DATA / 'nasbench201' / 'nb201_cifar10.csv'
needs_data = pytest.mark.skipif(not CSV.is_file(), reason=f'shared test data not found at {CSV}')

BEST = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|'
# The only conv (1<-0) leads nowhere: 2<-1 and 3<-1 are `none`; the one valid path 0->3 is a skip.
DEAD_CONV = '|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|'


@pytest.fixture(scope='module')
def table():
    return load_nb201_table()


@pytest.fixture(scope='module')
def csv_rows():
    if not CSV.is_file():
        pytest.skip(f'shared test data not found at {CSV}')
    with open(CSV, newline='') as fh:
        return list(csv.DictReader(fh))


def test_constants_follow_official_order():
    assert NB201_LABELS == ('cell/1_0', 'cell/2_0', 'cell/2_1', 'cell/3_0', 'cell/3_1', 'cell/3_2')
    node_paths = [[0, 3], [0, 2, 3], [0, 1, 2, 3], [0, 1, 3]]
    for nodes, edges in zip(node_paths, NB201_PATHS):
        assert [NB201_EDGES[e] for e in edges] == [(b, a) for a, b in zip(nodes, nodes[1:])]


def test_round_trip_all_cells():
    op_idx = all_op_indices()
    assert op_idx.shape == (15625, 6) and np.issubdtype(op_idx.dtype, np.integer)
    assert np.array_equal(op_idx, np.array(list(itertools.product(range(5), repeat=6))))
    assert np.array_equal(flat_index(op_idx), np.arange(15625))
    strings = op_indices_to_strings(op_idx)
    assert len(set(strings)) == 15625
    for row, s in zip(op_idx, strings):
        arch = string_to_arch(s)
        assert list(arch) == list(NB201_LABELS)
        assert arch_to_string(arch) == s
        assert np.array_equal(arch_to_op_indices(arch), row)


def test_string_layout():
    arch = string_to_arch(BEST)
    assert arch['cell/3_0'] == 'skip_connect' and arch['cell/3_1'] == 'nor_conv_1x1'
    assert op_indices_to_strings(arch_to_op_indices(BEST)) == [BEST]


@needs_data
def test_strings_are_exactly_the_csv_set(csv_rows):
    assert {r['arch'] for r in csv_rows} == set(op_indices_to_strings(all_op_indices()))


@pytest.mark.parametrize('bad', [
    '', BEST[1:], BEST[:-1], BEST.replace('+', '|', 1), BEST + '+|none~0|',
    BEST.replace('skip_connect~0', 'skip_connect~1'), BEST.replace('skip_connect~0', 'skip_connect0'),
    BEST.replace('nor_conv_1x1', 'conv_1x1'), BEST.replace('skip_connect', 'identity'),
    BEST.replace('|skip_connect~0', ''), BEST.replace('~2|', '~2|none~3|'),
])
def test_malformed_strings_raise(bad):
    with pytest.raises(ValueError, match='expected'):
        string_to_arch(bad)


def test_arch_to_string_is_strict():
    arch = string_to_arch(BEST)
    with pytest.raises(ValueError, match='missing labels'):
        arch_to_string({k: v for k, v in arch.items() if k != 'cell/3_2'})
    with pytest.raises(ValueError, match='unexpected labels'):
        arch_to_string({**arch, 'cell/4_0': 'none'})
    with pytest.raises(ValueError, match='Unknown NAS-Bench-201 op'):
        arch_to_string({**arch, 'cell/1_0': 'conv_3x3'})
    with pytest.raises(TypeError):
        arch_to_string(BEST)


def test_from_nni_hub_arch_converts_labels_and_ops():
    hub = {'cell/0_1': 'conv_3x3', 'cell/0_2': 'conv_3x3', 'cell/1_2': 'conv_3x3', 'cell/0_3': 'skip_connect',
           'cell/1_3': 'conv_1x1', 'cell/2_3': 'conv_3x3'}
    assert arch_to_string(from_nni_hub_arch(hub)) == BEST
    with pytest.raises(ValueError, match='lacks label'):
        from_nni_hub_arch({k: v for k, v in hub.items() if k != 'cell/2_3'})
    with pytest.raises(ValueError, match='Unknown hub op'):
        from_nni_hub_arch({**hub, 'cell/0_1': 'nor_conv_3x3'})


def test_from_nni_hub_arch_accepts_a_real_hub_sample():
    from nni.nas.hub.pytorch import NasBench201
    space = NasBench201(stem_out_channels=4, num_modules_per_stack=1)
    sample = {}
    space.random(memo=sample, random_state=np.random.RandomState(0))
    arch = from_nni_hub_arch(sample)
    assert list(arch) == list(NB201_LABELS)
    assert string_to_arch(arch_to_string(arch)) == arch


def test_valid_paths_on_hand_examples():
    assert valid_path_mask(arch_to_op_indices(BEST)).tolist() == [[True] * 4]
    assert valid_path_mask(arch_to_op_indices(DEAD_CONV)).tolist() == [[True, False, False, False]]
    assert edges_on_valid_paths(arch_to_op_indices(DEAD_CONV)).tolist() == [[0, 0, 0, 1, 0, 0]]
    assert not valid_path_mask(np.zeros(6, dtype=int)).any()


def test_structural_rules_on_hand_examples():
    both = np.stack([arch_to_op_indices(BEST), arch_to_op_indices(DEAD_CONV)])
    assert count_convs_on_valid_paths(both).tolist() == [5, 0]
    assert params_on_valid_paths(both).tolist() == [(4 * 9 + 1) * 16 ** 2, 0]
    assert params_on_valid_paths(both, channels=8).tolist() == [(4 * 9 + 1) * 64, 0]
    assert op_type_order_score(both).tolist() == pytest.approx([(4 * 3 + 2) / 5, 0.0])
    # A 3x3 conv on two valid paths is still one edge: 1<-0 conv, 2<-1 and 3<-1 skips give 2 paths through it.
    shared = string_to_arch('|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|skip_connect~1|skip_connect~2|')
    assert params_on_valid_paths(arch_to_op_indices(shared)).tolist() == [9 * 256]
    assert op_type_order_score(arch_to_op_indices(shared)).tolist() == [3.0]


def test_op_indices_validation():
    with pytest.raises(ValueError, match=r'shape \(n, 6\)'):
        valid_path_mask(np.zeros((2, 5), dtype=int))
    with pytest.raises(ValueError, match='must lie in'):
        flat_index(np.full(6, 5))
    with pytest.raises(ValueError, match='unknown ops'):
        op_type_order_score(all_op_indices()[:2], {'conv': 1.0})


def test_nb201_choices():
    assert nb201_choices(NB201_OPS[1:])['cell/3_2'] == list(NB201_OPS[1:])
    with pytest.raises(ValueError):
        nb201_choices(['nor_conv_5x5'])


def test_table_best_and_lookup(table):
    assert table.columns == ('cifar10_test', 'cifar10_valid')
    string, acc = table.best('cifar10_test')
    assert round(acc, 2) == 94.37 and string == BEST
    assert round(table.best('cifar10_valid')[1], 2) == 91.61
    assert table.accuracy(BEST) == acc == table.accuracy(string_to_arch(BEST))
    op_idx = all_op_indices()[[0, 777, 15624]]
    expected = [table.accuracy(s, 'cifar10_valid') for s in op_indices_to_strings(op_idx)]
    assert table.accuracies(op_idx, 'cifar10_valid').tolist() == expected
    no_path = ~valid_path_mask(all_op_indices()).any(axis=1)
    assert no_path.sum() == 341 and np.all(table.values()[no_path] == 10.0)


def test_table_rank_percentile(table):
    values = table.values('cifar10_test')
    assert table.rank_percentile(values.max()) == 0.0
    assert table.rank_percentile(values.min()) == pytest.approx(1 - np.sum(values == values.min()) / 15625)
    fractions = table.rank_percentile(np.array([values.max(), 93.78]))
    assert fractions.shape == (2,) and 0.005 < fractions[1] < 0.01


def test_table_errors(table, tmp_path):
    with pytest.raises(KeyError, match='cifar10_test'):
        table.values('cifar100_test')
    with pytest.raises(FileNotFoundError):
        load_nb201_table(tmp_path / 'missing.csv')
    partial = tmp_path / 'partial.csv'
    partial.write_text(f'index,arch,cifar10_test\n0,{BEST},94.37\n')
    with pytest.raises(ValueError, match='lacks 15624'):
        load_nb201_table(partial)
    no_acc = tmp_path / 'noacc.csv'
    no_acc.write_text(f'index,arch\n0,{BEST}\n')
    with pytest.raises(ValueError, match='expected index, arch'):
        load_nb201_table(no_acc)


def test_table_values_are_read_only(table):
    with pytest.raises(ValueError):
        table.values()[0] = 0.0


@needs_data
def test_shipped_table_equals_the_csv(table, csv_rows, tmp_path):
    from_csv = load_nb201_table(CSV)
    gz = tmp_path / 'copy.csv.gz'
    gz.write_bytes(gzip.compress(CSV.read_bytes()))
    for other in (from_csv, load_nb201_table(gz)):
        assert other.strings == table.strings and other.columns == table.columns
        assert np.array_equal(other.benchmark_index, table.benchmark_index)
        for col in table.columns:
            assert np.array_equal(other.values(col), table.values(col))
    for row in csv_rows:
        r = int(flat_index(arch_to_op_indices(row['arch']))[0])
        assert table.benchmark_index[r] == int(row['index'])
        assert table.values('cifar10_test')[r] == float(row['cifar10_test'])


def test_structural_baseline_taus_match_calibration(table):
    op_idx = all_op_indices()
    acc = table.accuracies(op_idx)
    taus = [stats.kendalltau(rule(op_idx), acc).statistic
            for rule in (count_convs_on_valid_paths, params_on_valid_paths, op_type_order_score)]
    assert taus == pytest.approx([0.611, 0.654, 0.669], abs=0.006)
