"""Overhead of the retrain trial wrapper and its per-epoch reporting, against the same training without NNI.

Three ways to train the same architecture on the same data with the same recipe (CPU preset, NAS-Bench-201 cell,
C=8 N=1, CIFAR-10 JPEGs from ../shared/data, one thread), alternated over ``--rounds`` so that load from other jobs
hits each alike:

- ``plain``: a hand-written PyTorch loop (no Lightning, no NNI): same splits, network, augmentation, SGD, cosine
  schedule, gradient clipping and per-epoch validation;
- ``direct``: :func:`nni_labelfree.experiment.retrain.run_retrain` without a reporter (NNI's Lightning evaluator, no
  trial wrapper);
- ``trial``: :func:`nni_labelfree.experiment.retrain.run_trial`, the nnictl entry point: ``get_next_parameter``,
  configuration layers, ``nni.report_intermediate_result`` every epoch, ``nni.report_final_result``, artifacts.
  Outside nnictl NNI's report functions log the metric instead of sending it to the manager (one HTTP message per
  epoch under nnictl).

Per-epoch times (training + validation, epoch 1 left out as warm-up) are taken as wall and as process CPU time (the
latter moves less with other jobs on the machine); whole-call times include data loading, network building, the
FLOPs profile, the test pass and the artifacts. Overheads are given from the medians and from the minima over rounds.
Measured directly (not by difference): the time inside the per-epoch reporter, and the time training waits for the
per-epoch resumable checkpoint (``direct`` and ``trial`` write one, ``plain`` does not). Target: < 2% per epoch.

    python -m bench.trial_overhead --out bench/results/trial_overhead.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from bench.common import emit_json

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / 'shared' / 'data' / 'images' / 'cifar10_jpeg.tar.gz'
CELL = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|'


class EpochClock(pl.Callback):
    """Wall and CPU seconds from each training epoch's start to its end hooks (validation runs in between)."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def settings(args) -> dict:
    return {'arch': CELL, 'preset': 'cpu', 'data': 'imagefolder', 'data_root': str(ARCHIVE),
            'num_images': args.images, 'test_images': args.images // 2, 'epochs': args.epochs,
            'num_threads': 1, 'seed': 0}


def run_plain(args, out: Path) -> tuple[EpochClock, float, float]:
    """The same training as a hand-written loop."""
    from nni_labelfree.data import derive_seed
    from nni_labelfree.experiment.retrain import build_network
    from nni_labelfree.experiment.retrain_arch import load_architecture
    from nni_labelfree.experiment.retrain_config import resolve_retrain_config
    from nni_labelfree.experiment.retrain_data import BatchAugment, labelled_splits
    start = (time.perf_counter(), time.process_time())
    config = resolve_retrain_config(settings(args))
    torch.set_num_threads(1)
    splits = labelled_splits(config)
    pl.seed_everything(config.seed, verbose=False)
    network, _ = build_network(config, load_architecture(config.arch).arch, splits.num_classes)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(derive_seed(config.seed, 3)))
    held = [torch.utils.data.DataLoader(part, batch_size=config.batch_size) for part in (splits.val, splits.test)]
    augment = BatchAugment(4, config.cutout, seed=config.seed)
    optimizer = torch.optim.SGD(network.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs, config.min_learning_rate)
    clock = EpochClock()
    for _ in range(config.epochs):
        clock.on_train_epoch_start(None, None)
        _train_epoch(network, loader, augment, optimizer)
        schedule.step()
        _evaluate(network, held[0])
        clock.on_train_epoch_end(None, None)
    _evaluate(network, held[1])
    return clock, time.perf_counter() - start[0], time.process_time() - start[1]


def _train_epoch(network, loader, augment, optimizer) -> torch.Tensor:
    """One epoch of SGD with the same per-epoch sums (loss x n, correct, n) the retrain module keeps."""
    network.train()
    sums = torch.zeros(3, dtype=torch.float64)
    for inputs, targets in loader:
        logits = network(augment(inputs))
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sums += torch.stack([loss.detach().double() * len(targets), (logits.argmax(1) == targets).sum().double(),
                             torch.tensor(float(len(targets)), dtype=torch.float64)])
    return sums


def _evaluate(network, loader) -> float:
    network.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, targets in loader:
            correct += int((network(inputs).argmax(1) == targets).sum())
            total += len(targets)
    return 100.0 * correct / max(total, 1)


def run_lightning(args, out: Path, trial: bool) -> tuple[EpochClock, float, float, float, float]:
    """``run_retrain`` directly, or through the trial entry point; returns the clock, totals, the reporter's time
    and the median time training waited for the per-epoch resumable checkpoint."""
    from nni_labelfree.experiment import retrain
    clock, reporter_seconds, checkpoints = EpochClock(), [0.0], []
    original_run, original_report = retrain.run_retrain, retrain._report_epoch

    class RecordedCheckpoint(retrain.ResumableCheckpoint):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            checkpoints.append(self)

    def timed_report(metrics):
        begin = time.perf_counter()
        original_report(metrics)
        reporter_seconds[0] += time.perf_counter() - begin

    def run_with_clock(*a, **kw):
        return original_run(*a, **kw, extra_callbacks=[clock])

    start = (time.perf_counter(), time.process_time())
    with mock.patch.object(retrain, 'run_retrain', run_with_clock), \
            mock.patch.object(retrain, '_report_epoch', timed_report), \
            mock.patch.object(retrain, 'ResumableCheckpoint', RecordedCheckpoint):
        if trial:
            flags = [f'{k}={v}' for k, v in {**settings(args), 'output_dir': str(out)}.items()]
            retrain.run_trial(flags)
        else:
            config = retrain.resolve_retrain_config(settings(args))
            retrain.run_retrain(config, out)
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    return clock, wall, cpu, reporter_seconds[0], statistics.median(checkpoints[0].save_seconds)


def _median_epoch(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def measure(args) -> dict:
    rows: dict[str, list[dict]] = {'plain': [], 'direct': [], 'trial': []}
    order = list(rows)
    for round_index in range(args.rounds):
        for name in order[round_index % 3:] + order[:round_index % 3]:  # rotate who goes first
            with tempfile.TemporaryDirectory() as tmp:
                if name == 'plain':
                    clock, wall, cpu = run_plain(args, Path(tmp))
                    reporter = checkpoint = 0.0
                else:
                    clock, wall, cpu, reporter, checkpoint = run_lightning(args, Path(tmp), trial=name == 'trial')
            rows[name].append({'epoch_wall': _median_epoch(clock.wall), 'epoch_cpu': _median_epoch(clock.cpu),
                               'total_wall': wall, 'total_cpu': cpu, 'reporter_seconds': reporter,
                               'checkpoint_wait_seconds': checkpoint})
            print(f'round {round_index} {name}: {rows[name][-1]}', file=sys.stderr, flush=True)
    return summarise(rows, args)


def summarise(rows: dict, args) -> dict:
    """Overheads from medians and from minima over rounds (the minimum is the least disturbed by other jobs)."""
    stats = {how: {name: {k: fn(r[k] for r in runs) for k in runs[0]} for name, runs in rows.items()}
             for how, fn in (('median', statistics.median), ('min', min))}

    def pct(how: str, a: str, b: str, key: str) -> float:
        return 100.0 * (stats[how][a][key] / stats[how][b][key] - 1.0)

    overhead = {how: {f'{a}_vs_{b}_{key}': pct(how, a, b, key)
                      for a, b in (('trial', 'direct'), ('trial', 'plain'), ('direct', 'plain'))
                      for key in ('epoch_cpu', 'epoch_wall', 'total_cpu')} for how in stats}
    reporter_per_epoch = stats['median']['trial']['reporter_seconds'] / args.epochs
    return {
        'setup': {'arch': CELL, 'preset': 'cpu', 'channels': 8, 'cells_per_stage': 1, 'images': args.images,
                  'epochs': args.epochs, 'rounds': args.rounds, 'threads': 1},
        'median': stats['median'], 'min': stats['min'],
        'overhead_percent': overhead,
        'reporter_seconds_per_epoch': reporter_per_epoch,
        'reporting_share_of_epoch_percent': 100.0 * reporter_per_epoch / stats['median']['trial']['epoch_wall'],
        'checkpoint_wait_share_of_epoch_percent': 100.0 * stats['median']['trial']['checkpoint_wait_seconds']
        / stats['median']['trial']['epoch_wall'],
        'target_percent': 2.0,
        'runs': rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=1000, help='training-split images (10%% validate)')
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    if not ARCHIVE.is_file():
        raise SystemExit(f'{ARCHIVE} is absent: this benchmark trains on the shared CIFAR-10 JPEG archive.')
    warnings.filterwarnings('ignore')
    emit_json(measure(args), args.out)


if __name__ == '__main__':
    main()
