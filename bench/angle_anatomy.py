"""Anatomy of the RLNAS angle on NAS-Bench-201: what it is built from, and how well a ranking blind to edges can do.

Reads the supernets that ``bench.search_quality`` saved (``checkpoints/supernet_final.pt``: initial and final
weights) and reports, per run and across runs:

- the rotation (cosine between initial and trained weights) and norm growth of the fixed layers, the 3x3 and the
  1x1 convolutions, each type pooled over the whole supernet;
- how much each edge's rotation is set by its position: the per-edge cosines (every cell, edge and conv op; their
  values per run and their mean are in the result) and their correlation between runs of different seeds. Near 1
  means the pattern repeats whatever the seed, so it comes from where the edge sits (stage, node), not from the
  draw of labels or weights;
- two references that use the table, so they show what an edge-blind ranking could reach rather than being
  label-free results: the best Kendall tau a seeded random search finds for an *op-type angle* (each op type on a
  valid path adds one rotation and one norm, the fixed layers another; five numbers fitted to the table), and the
  *composition oracle* (each cell scored by the mean table accuracy of the cells with the same ops on its valid
  paths, counted once per path, as the path-aware angle counts them).

    python -m bench.angle_anatomy --runs bench/results/search_quality/noise_s0 bench/results/search_quality/noise_s1 \
        bench/results/search_quality/noise_s2 --out bench/results/angle_anatomy_noise.json
"""
from __future__ import annotations

import argparse
import itertools
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.common import load_saved_supernet, run_quality_bench
from nni_labelfree.benchmarks import nasbench201 as nb
from nni_labelfree.metrics.angle import _pair_stats
from nni_labelfree.metrics.correlation import kendall_tau

CONV_OPS = ('nor_conv_3x3', 'nor_conv_1x1')
_I3, _I1, _IPOOL = (nb.NB201_OPS.index(op) for op in ('nor_conv_3x3', 'nor_conv_1x1', 'avg_pool_3x3'))


def path_op_counts(op_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(counts [n, len(NB201_OPS)], connected [n])``: how often each op lies on a valid input->output path (an
    edge on two valid paths counts twice, as in the path-aware angle), and whether the cell has a valid path."""
    valid = nb.valid_path_mask(op_idx)
    counts = np.zeros((len(op_idx), len(nb.NB201_OPS)))
    for p, edges in enumerate(nb.NB201_PATHS):
        for e in edges:
            counts[np.arange(len(op_idx)), op_idx[:, e]] += valid[:, p]
    return counts, valid.any(axis=1)


def composition_oracle_tau(truth: np.ndarray, counts: np.ndarray, connected: np.ndarray) -> tuple[float, int]:
    """Kendall tau of the mean table accuracy per path composition (disconnected cells form one group), and the
    number of compositions. It uses the table: a reference for rankings that see only the composition."""
    keys = [tuple(row) if c else None for row, c in zip(counts.astype(int), connected)]
    groups: dict = defaultdict(list)
    for key, value in zip(keys, truth):
        groups[key].append(value)
    means = {key: float(np.mean(values)) for key, values in groups.items()}
    return kendall_tau(np.array([means[k] for k in keys]), truth), len(groups)


def op_type_angle(counts: np.ndarray, connected: np.ndarray, params: Sequence[float]) -> np.ndarray:
    """A monotone transform of an angle built from op types only; disconnected cells lowest.

    ``params = (fixed_norm, conv1x1_norm, pool_norm, conv1x1_turn, pool_turn)``: norms relative to a 3x3 conv's,
    and ``1 - cos`` of the rotation rescaled so that the fixed layers turn 0 and a 3x3 conv 1 (a rotation order
    3x3 > fixed gives a positive scale; any other order is the same family up to sign). With equal initial and
    trained norms the cosine of a concatenation is the norm-weighted mean of the pieces' cosines, so ranking by the
    norm-weighted mean turn ranks by the angle.
    """
    fixed, n1, npool, u1, upool = params
    turn = counts[:, _I3] + counts[:, _I1] * n1 * u1 + counts[:, _IPOOL] * npool * upool
    weight = fixed + counts[:, _I3] + counts[:, _I1] * n1 + counts[:, _IPOOL] * npool
    return np.where(connected, turn / np.maximum(weight, 1e-12), -np.inf)


def op_type_angle_ceiling(truth: np.ndarray, counts: np.ndarray, connected: np.ndarray, trials: int, refine: int,
                          seed: int) -> dict:
    """Best Kendall tau of :func:`op_type_angle` over a seeded random search (norms log-uniform, turns uniform)
    followed by a local search around the best point. Fitted to the table: a reference, not a result."""
    rng = np.random.default_rng(seed)

    def tau(params) -> float:
        return kendall_tau(op_type_angle(counts, connected, params), truth)

    best, best_tau = None, -np.inf
    for _ in range(trials):
        params = np.array([10 ** rng.uniform(-2, 2), 10 ** rng.uniform(-2, 1), 10 ** rng.uniform(-2, 1),
                           rng.uniform(-2, 2), rng.uniform(-3, 2)])
        value = tau(params)
        if value > best_tau:
            best, best_tau = params, value
    for _ in range(refine):
        params = best.copy()
        j = rng.integers(len(params))
        params[j] = params[j] * 10 ** rng.normal(0, 0.2) if j < 3 else params[j] + rng.normal(0, 0.1)
        value = tau(params)
        if value > best_tau:
            best, best_tau = params, value
    names = ('fixed_norm', 'conv1x1_norm', 'pool_norm', 'conv1x1_turn', 'pool_turn')
    return {'tau': best_tau, 'params': dict(zip(names, best.round(4).tolist())), 'trials': trials, 'refine': refine}


def edge_cosines(initial: dict, final: dict) -> dict[str, float]:
    """Cosine between initial and trained weights of every conv candidate on every edge, keyed by parameter name."""
    return {name: _cos(_pair_stats([(w0, final[name])])) for name, w0 in initial.items()
            if '.edges.' in name and any(f'.{op}.' in name for op in CONV_OPS) and w0.dim() == 4}


def type_rotations(initial: dict, final: dict) -> dict[str, dict[str, float]]:
    """Per piece type (fixed layers, 3x3, 1x1 convs), summed over the supernet: cosine and trained/initial norm."""
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))
    for name, w0 in initial.items():
        kind = next((op for op in CONV_OPS if f'.{op}.' in name), None) if '.edges.' in name else 'fixed'
        if kind is not None:
            sums[kind] += _pair_stats([(w0, final[name])])
    return {kind: {'cos': _cos(s), 'norm_growth': float(np.sqrt(s[2] / s[1]))} for kind, s in sums.items()}


def _cos(stats: np.ndarray) -> float:
    return float(stats[0] / np.sqrt(stats[1] * stats[2]))


def position_agreement(cosines: Sequence[dict[str, float]]) -> dict[str, list[float]]:
    """Per conv op, the Pearson correlation of per-edge cosines between every pair of runs."""
    out = {}
    for op in CONV_OPS:
        names = sorted(n for n in cosines[0] if f'.{op}.' in n)
        rows = [np.array([c[n] for n in names]) for c in cosines]
        out[op] = [float(np.corrcoef(a, b)[0, 1]) for a, b in itertools.combinations(rows, 2)]
    return out


def run(runs: Sequence[Path], trials: int, refine: int, seed: int) -> dict:
    """The whole report (see the module docstring)."""
    supernets = [load_saved_supernet(r) for r in runs]
    table = nb.load_nb201_table()
    truth, op_idx = table.values('cifar10_test'), nb.all_op_indices()
    counts, connected = path_op_counts(op_idx)
    oracle, compositions = composition_oracle_tau(truth, counts, connected)
    cosines = [edge_cosines(*s) for s in supernets]
    return {
        'runs': [str(r) for r in runs],
        'type_rotations': {str(r): type_rotations(*s) for r, s in zip(runs, supernets)},
        'edge_cosines': {str(r): c for r, c in zip(runs, cosines)},
        'mean_edge_cosines': {name: float(np.mean([c[name] for c in cosines])) for name in sorted(cosines[0])},
        'position_agreement': position_agreement(cosines) if len(runs) > 1 else None,
        'op_type_angle_ceiling': op_type_angle_ceiling(truth, counts, connected, trials, refine, seed),
        'composition_oracle': {'tau': oracle, 'compositions': compositions},
        'op_type_order_rule': kendall_tau(nb.op_type_order_score(op_idx), truth),
    }


def format_table(result: dict) -> str:
    lines = ['| run | fixed cos (growth) | 3x3 cos (growth) | 1x1 cos (growth) |', '|---|---|---|---|']
    for r, kinds in result['type_rotations'].items():
        cells = [f"{kinds[k]['cos']:.3f} ({kinds[k]['norm_growth']:.2f}x)" for k in ('fixed', *CONV_OPS)]
        lines.append(f'| {r} | ' + ' | '.join(cells) + ' |')
    agreement = result['position_agreement']
    if agreement:
        lines.append('per-edge cosine correlation between runs: ' + ', '.join(
            f'{op} {min(v):.2f}..{max(v):.2f}' for op, v in agreement.items()))
    lines.append(f"op-type angle fitted to the table: tau {result['op_type_angle_ceiling']['tau']:.3f}; composition "
                 f"oracle: {result['composition_oracle']['tau']:.3f}; op-type order rule: "
                 f"{result['op_type_order_rule']:.3f}")
    return '\n'.join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', nargs='+', type=Path, required=True,
                        help='output folders of bench.search_quality runs (one or more; two or more for agreement)')
    parser.add_argument('--trials', type=int, default=4000, help='random points of the op-type angle search')
    parser.add_argument('--refine', type=int, default=1500, help='local steps around the best point')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=None)
    args = parser.parse_args(argv)
    if args.trials < 1 or args.refine < 0 or args.seed < 0:
        parser.error('--trials must be positive, --refine and --seed non-negative')
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run_quality_bench('angle_anatomy', lambda: run(args.runs, args.trials, args.refine, args.seed), args.out,
                      format_table)


if __name__ == '__main__':
    main()
