"""RLNAS supernet step time vs NNI's RandomOneShot on the same space, data and batch, measured alternately.

Each round trains a fresh supernet for ``--steps`` steps through the same Lightning ``Trainer`` settings, once with
NNI's ``RandomOneShot`` (true labels) and once with ``RLNAS`` (random labels, seeded sampling); a step is the time
between consecutive batch starts (data loading, path sampling, forward, backward, update), median over the steps
after the first two, one warm-up round each. Reported: median per-step times and their ratio (target <= 1.05).
RLNAS keeps its supernet channels-last by default (``RLNAS(channels_last=True)``), NNI's ``RandomOneShot`` does
not, so ``RandomOneShot channels_last`` (the same layout) is timed too: the ratio against it is RLNAS's own overhead,
the ratio against NNI as shipped is what a user switching strategy sees. RLNAS also redraws NAS-Bench-201 paths in
which a node has only ``none`` inputs (about a quarter of uniform draws), so its paths carry fewer ``none`` ops and
more convolutions; ``RandomOneShot channels_last filtered`` (NNI's own ``filter`` argument, the same rule) trains the
same path distribution, so the ratio against it is the code's overhead alone.

    python -m bench.step_time --channels 16 --cells 5 --steps 20 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from torch.utils.data import TensorDataset

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.search_spaces import NasBench201Space
from nni_labelfree.strategies import RLNAS
from nni_labelfree.strategies.common import use_channels_last

from bench.common import StepClock, emit_json


def _fit_seconds(strategy, args, dataset, channels_last: bool = False) -> float:
    torch.manual_seed(0)
    clock = StepClock()
    space = NasBench201Space(channels=args.channels, cells_per_stage=args.cells)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True)
    evaluator = Classification(train_dataloaders=loader, val_dataloaders=loader, num_classes=10, max_epochs=1,
                               limit_train_batches=args.steps, limit_val_batches=0, num_sanity_val_steps=0,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False,
                               enable_model_summary=False, accelerator='cpu', callbacks=[clock])
    network = strategy.mutate_model(space)
    if channels_last:
        use_channels_last(network)
    strategy.mutate_evaluator(evaluator).evaluate(network)
    return clock.step_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--channels', type=int, default=16)
    parser.add_argument('--cells', type=int, default=5)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--threads', type=int, default=1, help='torch threads (the reported numbers: 1)')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings('ignore')
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.steps
    dataset = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    makers = (('RandomOneShot', RandomOneShot, False), ('RandomOneShot channels_last', RandomOneShot, True),
              ('RandomOneShot channels_last filtered',
               lambda: RandomOneShot(filter=NasBench201Space.sample_filter), True),
              ('RLNAS', lambda: RLNAS(seed=round_index), False))
    times: dict[str, list[float]] = {name: [] for name, _, _ in makers}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, make, channels_last in makers:
            seconds = _fit_seconds(make(), args, dataset, channels_last)
            if round_index > 0:
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {'space': f'nasbench201 C={args.channels} N={args.cells}', 'batch': args.batch, 'steps': args.steps,
              'rounds': args.rounds, 'threads': torch.get_num_threads(),
              'step_seconds_median': medians, 'step_seconds_all': times,
              'ratio_rlnas_over_random_one_shot': medians['RLNAS'] / medians['RandomOneShot'],
              'ratio_rlnas_over_random_one_shot_channels_last':
                  medians['RLNAS'] / medians['RandomOneShot channels_last'],
              'ratio_rlnas_over_random_one_shot_channels_last_filtered':
                  medians['RLNAS'] / medians['RandomOneShot channels_last filtered'],
              'round_ratios_over_filtered': [r / b for r, b in zip(times['RLNAS'],
                                                                   times['RandomOneShot channels_last filtered'])]}
    emit_json(result, args.out)


if __name__ == '__main__':
    main()
