"""Pi-NAS supernet step time vs NNI's RandomOneShot on the same space, images and batch, measured alternately.

Each round trains a fresh supernet for ``--steps`` steps through the same Lightning ``Trainer`` settings, once with
NNI's ``RandomOneShot`` (SPOS: one path, one forward and backward) and once with ``PiNAS`` (two student passes with
gradients, two teacher passes without, the path-wise EMA, InfoNCE against the queue, and the two augmented views
made on the fly in the loading process). A step is the time between consecutive batch starts, median over the steps
after the first two; one warm-up round each. Also reported: the time to make one batch of views (augmentation),
so the ratio without it can be read off, and the ratio within every round with its median (the machine's load
changes between rounds; the two runs of a round are next to each other, so their ratio is the steadier number).
Pi-NAS's queue (49152 keys) costs as much as the tiny supernet here: the InfoNCE logits are ``2 x B x 49152 x 128``
multiply-adds forward and again backward, so a smaller queue is timed too. Target: ratio <= 3.0.

Pi-NAS keeps its supernet channels-last by default (``PiNAS(channels_last=True)``), which NNI's ``RandomOneShot``
does not do. Two baselines are therefore timed: ``RandomOneShot`` as NNI ships it (what a user switching strategy
compares against) and ``RandomOneShot channels_last`` (the same layout, so the ratio is the algorithm's own
overhead); ``--contiguous`` also times Pi-NAS in PyTorch's default layout, ``--teacher-precision bfloat16`` with
its key passes under bf16 autocast (``PiNAS(teacher_precision='bfloat16')``), ``--queue-precision bfloat16`` with
the queue stored and multiplied in bf16 (``PiNAS(queue_precision='bfloat16')``), ``--both-precisions`` with both.

    python -m bench.pinas_step_time --channels 16 --cells 1 --batch 64 --steps 20 --rounds 3 --queues 49152,4096
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.data import TensorImageDataset
from nni_labelfree.data.views import ViewDataset
from nni_labelfree.search_spaces import NasBench201Space
from nni_labelfree.strategies.common import use_channels_last
from nni_labelfree.strategies.pinas import PiNAS

from bench.common import StepClock, emit_json


def _fit_seconds(strategy, args, dataset, channels_last: bool = False) -> float:
    """Median step time of ``strategy``; ``channels_last`` converts a plain supernet (NNI's strategies) to it."""
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


def _view_seconds(dataset, batch: int, repeats: int = 5) -> float:
    views = ViewDataset(dataset, 2, seed=0)
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        views.__getitems__(list(range(k * batch, (k + 1) * batch)))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


BASELINES = ('RandomOneShot', 'RandomOneShot channels_last')


def _round_ratios(times: dict[str, list[float]], name: str, baseline: str) -> list[float]:
    return [pinas / spos for pinas, spos in zip(times[name], times[baseline])]


def _ratios(medians: dict[str, float], times: dict[str, list[float]], views: float, baseline: str) -> dict:
    base, names = medians[baseline], [name for name in medians if name not in BASELINES]
    return {'ratio': {name: medians[name] / base for name in names},
            'ratio_without_augmentation': {name: (medians[name] - views) / base for name in names},
            'round_ratios': {name: _round_ratios(times, name, baseline) for name in names},
            'round_ratio_median': {name: statistics.median(_round_ratios(times, name, baseline)) for name in names}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--channels', type=int, default=16)
    parser.add_argument('--cells', type=int, default=1)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--queues', default='49152,4096',
                        help='Pi-NAS queue sizes to time, comma-separated (paper: 49152)')
    parser.add_argument('--contiguous', action='store_true',
                        help='also time Pi-NAS with the first queue size in PyTorch\'s default layout')
    parser.add_argument('--teacher-precision', default=None, choices=('bfloat16', 'float16'),
                        help='also time Pi-NAS (first queue size) with its key passes in this autocast precision')
    parser.add_argument('--queue-precision', default=None, choices=('bfloat16',),
                        help='also time Pi-NAS (first queue size) with its queue products in this precision')
    parser.add_argument('--both-precisions', action='store_true',
                        help='also time Pi-NAS (first queue size) with bfloat16 key passes and queue products')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (the reported numbers: 1)')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings('ignore')
    g = torch.Generator().manual_seed(0)
    n = args.batch * (args.steps + 1)
    dataset = TensorImageDataset(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                                 torch.randint(0, 10, (n,), generator=g), num_true_classes=10)
    queues = [int(q) for q in args.queues.split(',')]
    makers = [('RandomOneShot', lambda seed: RandomOneShot(), False),
              ('RandomOneShot channels_last', lambda seed: RandomOneShot(), True)]
    makers += [(f'PiNAS queue {q}', lambda seed, q=q: PiNAS(seed=seed, queue_size=q), False) for q in queues]
    variants = {'contiguous': dict(channels_last=False) if args.contiguous else None,
                f'teacher {args.teacher_precision}': dict(teacher_precision=args.teacher_precision)
                if args.teacher_precision else None,
                f'queue {args.queue_precision}': dict(queue_precision=args.queue_precision)
                if args.queue_precision else None,
                'teacher+queue bfloat16': dict(teacher_precision='bfloat16', queue_precision='bfloat16')
                if args.both_precisions else None}
    # every variant runs the first queue size; kw=kw binds each variant's settings to its own maker
    makers += [(f'PiNAS queue {queues[0]} {label}', lambda seed, kw=kw: PiNAS(seed=seed, queue_size=queues[0], **kw),
                False) for label, kw in variants.items() if kw is not None]
    times: dict[str, list[float]] = {name: [] for name, _, _ in makers}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, make, channels_last in makers:
            seconds = _fit_seconds(make(round_index), args, dataset, channels_last)
            if round_index > 0:
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    views = _view_seconds(dataset, args.batch)
    result = {'space': f'nasbench201 C={args.channels} N={args.cells}', 'batch': args.batch, 'steps': args.steps,
              'rounds': args.rounds, 'threads': torch.get_num_threads(), 'step_seconds_median': medians,
              'step_seconds_all': times, 'views_seconds_per_batch': views,
              'over_nni_random_one_shot': _ratios(medians, times, views, BASELINES[0]),
              'over_random_one_shot_channels_last': _ratios(medians, times, views, BASELINES[1]),
              'target_ratio': 3.0}
    emit_json(result, args.out)


if __name__ == '__main__':
    main()
