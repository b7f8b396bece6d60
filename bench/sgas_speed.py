"""SGAS time to architecture vs NNI's DARTS: same space, data, trainer and number of epochs, per-epoch time curve.

Reference: Li et al., "SGAS: Sequential Greedy Architecture Search", CVPR 2020. SGAS fixes one edge per cell type
every ``decision_freq`` epochs after ``decision_warmup``; a decided edge runs one op, a pruned edge only ``none``,
and once all edges are decided the architecture step is skipped. NNI's first-order ``DARTS`` keeps every mixed
edge to the end. Both train the same ``DartsSpace`` supernet (with ``none``), on the same random images, with the
same evaluator (Adam, batch ``--batch``, ``--images`` images for weights and as many for alphas), gradient clip 5.
The default schedule is SGAS's own (50 epochs: decisions after epochs 10, 15, ..., 45, five more to finish); time
to architecture is the time of ``fit`` plus ``export``. The machine is shared, so besides wall time the process's
CPU time is measured (one thread: the work done, unaffected by other jobs taking turns on the cores); the ratio
reported against the target is the CPU-time one. Contenders run one after the other, ``--repeats`` times in
alternating order; the JSON keeps every run's per-epoch seconds (wall and CPU) and the load average.

    python -m bench.sgas_speed --width 8 --cells 5 --size 16 --batch 8 --images 16 --epochs 50
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.oneshot.pytorch.strategy import DARTS

from nni_labelfree.search_spaces import DartsSpace
from nni_labelfree.search_spaces.darts import darts_sample_is_valid
from nni_labelfree.strategies import SGAS

from bench.common import emit_json

__all__ = ['main']


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class EpochClock(pl.Callback):
    """Wall and process CPU time of every training epoch."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = _now()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        wall, cpu = _now()
        self.wall.append(wall - self._start[0])
        self.cpu.append(cpu - self._start[1])


def _evaluator(args, clock: EpochClock) -> Classification:
    g = torch.Generator().manual_seed(0)
    train, val = (TensorDataset(torch.randn(args.images, 3, args.size, args.size, generator=g),
                                torch.randint(0, 10, (args.images,), generator=g)) for _ in range(2))
    return Classification(train_dataloaders=DataLoader(train, batch_size=args.batch, shuffle=False),
                          val_dataloaders=DataLoader(val, batch_size=args.batch, shuffle=False), num_classes=10,
                          learning_rate=0.01, max_epochs=args.epochs, num_sanity_val_steps=0,
                          enable_progress_bar=False, logger=False, enable_checkpointing=False,
                          enable_model_summary=False, accelerator='cpu', callbacks=[clock])


def _strategy(name: str, args):
    if name == 'DARTS':
        return DARTS(gradient_clip_val=5.0)
    return SGAS(decision_warmup=args.decision_warmup, decision_freq=args.decision_freq, gradient_clip_val=5.0)


def _run(name: str, args) -> dict:
    torch.manual_seed(0)
    clock, strategy = EpochClock(), _strategy(name, args)
    space = DartsSpace(width=args.width, num_cells=args.cells)
    supernet = strategy.mutate_model(space)
    lightning = strategy.mutate_evaluator(_evaluator(args, clock))
    started = _now()
    lightning.evaluate(supernet)
    module = lightning.module
    arch = module.export() if name == 'SGAS' else space.arch_from_probs(module.export_probs())
    wall, cpu = (end - start for end, start in zip(_now(), started))
    result = {'wall_seconds': wall, 'cpu_seconds': cpu, 'epoch_wall_seconds': clock.wall,
              'epoch_cpu_seconds': clock.cpu, 'valid_genotype': darts_sample_is_valid(arch),
              'load_average': os.getloadavg()}
    if name == 'SGAS':
        result['decision_epochs'] = sorted({r['epoch'] for r in module.decisions.records})
    return result


def _medians(runs: dict[str, list[dict]], key: str, epochs: int) -> tuple[dict, dict]:
    total = {name: statistics.median(r[f'{key}_seconds'] for r in rs) for name, rs in runs.items()}
    curve = {name: [statistics.median(r[f'epoch_{key}_seconds'][e] for r in rs) for e in range(epochs)]
             for name, rs in runs.items()}
    return total, curve


def _summary(runs: dict[str, list[dict]], args) -> dict:
    cpu, cpu_curve = _medians(runs, 'cpu', args.epochs)
    wall, wall_curve = _medians(runs, 'wall', args.epochs)
    warm = range(args.decision_warmup + 1)  # epochs before the first decision: both run the full supernet
    return {
        'space': f'DartsSpace width={args.width} cells={args.cells}', 'image_size': args.size, 'batch': args.batch,
        'images_per_loader': args.images, 'epochs': args.epochs, 'decision_warmup': args.decision_warmup,
        'decision_freq': args.decision_freq, 'repeats': args.repeats, 'threads': torch.get_num_threads(),
        'cpu_seconds_to_architecture': cpu, 'wall_seconds_to_architecture': wall,
        'speedup_darts_over_sgas_cpu': cpu['DARTS'] / cpu['SGAS'],
        'speedup_darts_over_sgas_wall': wall['DARTS'] / wall['SGAS'],
        'sgas_over_darts_before_first_decision_cpu': statistics.median(
            cpu_curve['SGAS'][e] / cpu_curve['DARTS'][e] for e in warm),
        'sgas_over_darts_last_epoch_cpu': cpu_curve['SGAS'][-1] / cpu_curve['DARTS'][-1],
        'epoch_cpu_seconds_median_curve': cpu_curve, 'epoch_wall_seconds_median_curve': wall_curve,
        'runs': runs, 'target': 'speedup_darts_over_sgas_cpu >= 1.5',
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--width', type=int, default=8)
    parser.add_argument('--cells', type=int, default=5)
    parser.add_argument('--size', type=int, default=16, help='image side in pixels')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--images', type=int, default=16, help='images in each of the train and val loaders')
    parser.add_argument('--epochs', type=int, default=50)
    parser.add_argument('--decision-warmup', type=int, default=9)
    parser.add_argument('--decision-freq', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    warnings.filterwarnings('ignore')
    torch.set_num_threads(args.threads)
    runs: dict[str, list[dict]] = {'DARTS': [], 'SGAS': []}
    for repeat in range(args.repeats):
        for name in (('DARTS', 'SGAS') if repeat % 2 == 0 else ('SGAS', 'DARTS')):
            runs[name].append(_run(name, args))
            last = runs[name][-1]
            print(f'{name} run {repeat}: {last["cpu_seconds"]:.1f} s CPU, {last["wall_seconds"]:.1f} s wall',
                  flush=True)
    emit_json(_summary(runs, args), args.out)


if __name__ == '__main__':
    main()
