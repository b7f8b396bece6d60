"""UnNAS search step time per image vs NNI's DARTS on the same space and batch, measured alternately in one run.

Reference: Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020 (UnNAS is first-order DARTS
with a pretext objective). Each round builds a fresh NAS-Bench-201 supernet and trains it for ``--steps`` steps
through the same Lightning ``Trainer`` settings, once per contender; a step is the time between consecutive batch
starts (data loading, pretext transform, architecture step, weight step), median over the steps after the first two,
after one warm-up round. Contenders:

- ``DARTS``: NNI's first-order ``DARTS`` with true labels, train and val loaders of ``--batch`` images each
  (the two halves of the images, as UnNAS splits them);
- ``UnNAS-supervised``: UnNAS's code path with the true labels, the same ``--batch`` images per step: the
  overhead of our strategy itself (target <= 1.1x);
- ``UnNAS-rotation``: ``--batch`` images per step, i.e. ``4 * batch`` network inputs (all four rotations);
  compared per network input with ``DARTS-x4`` (NNI's DARTS at ``4 * batch`` images), and reported per image.

    python -m bench.unnas_step_time --channels 8 --cells 1 --batch 16 --steps 20 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from torch.utils.data import Subset, TensorDataset

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.oneshot.pytorch.strategy import DARTS

from nni_labelfree.search_spaces import NasBench201Space
from nni_labelfree.strategies import UnNAS

from bench.common import StepClock, emit_json

__all__ = ['main']


def _evaluator(train: DataLoader, val: DataLoader | None, args, clock: StepClock) -> Classification:
    return Classification(train_dataloaders=train, val_dataloaders=val, num_classes=10, max_epochs=1,
                          limit_train_batches=args.steps, limit_val_batches=0, num_sanity_val_steps=0,
                          enable_progress_bar=False, logger=False, enable_checkpointing=False,
                          enable_model_summary=False, accelerator='cpu', callbacks=[clock])


def _darts_seconds(args, dataset, batch: int) -> float:
    """NNI's DARTS: weights on the first half, alphas on the second, ``batch`` images each."""
    torch.manual_seed(0)
    clock, half = StepClock(), len(dataset) // 2
    train = DataLoader(Subset(dataset, range(half)), batch_size=batch, shuffle=True, drop_last=True)
    val = DataLoader(Subset(dataset, range(half, 2 * half)), batch_size=batch, shuffle=True, drop_last=True)
    strategy = DARTS(gradient_clip_val=5.0)
    space = NasBench201Space(channels=args.channels, cells_per_stage=args.cells)
    strategy.mutate_model(space)
    strategy.mutate_evaluator(_evaluator(train, val, args, clock)).evaluate(space)
    return clock.step_seconds()


def _unnas_seconds(args, dataset, task: str) -> float:
    """UnNAS: the same images split in halves inside the strategy, ``args.batch`` images per step."""
    torch.manual_seed(0)
    clock = StepClock()
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True)
    evaluator = _evaluator(loader, loader, args, clock)
    strategy = UnNAS(task, seed=0)
    strategy.prepare(loader)
    space = NasBench201Space(channels=args.channels, cells_per_stage=args.cells)
    strategy.mutate_model(space)
    strategy.mutate_evaluator(evaluator).evaluate(space)
    return clock.step_seconds()


def _measure(args, dataset) -> dict[str, list[float]]:
    contenders = {
        'DARTS': lambda: _darts_seconds(args, dataset, args.batch),
        'UnNAS-supervised': lambda: _unnas_seconds(args, dataset, 'supervised'),
        'DARTS-x4': lambda: _darts_seconds(args, dataset, 4 * args.batch),
        'UnNAS-rotation': lambda: _unnas_seconds(args, dataset, 'rotation'),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, run in contenders.items():
            seconds = run()
            if round_index > 0:
                times[name].append(seconds)
    return times


def _result(args, times: dict[str, list[float]]) -> dict:
    step = {name: statistics.median(values) for name, values in times.items()}
    inputs = {'DARTS': args.batch, 'UnNAS-supervised': args.batch, 'DARTS-x4': 4 * args.batch,
              'UnNAS-rotation': 4 * args.batch}
    images = {'DARTS': args.batch, 'UnNAS-supervised': args.batch, 'DARTS-x4': 4 * args.batch,
              'UnNAS-rotation': args.batch}
    return {
        'space': f'nasbench201 C={args.channels} N={args.cells}', 'batch_images': args.batch, 'steps': args.steps,
        'rounds': args.rounds, 'threads': torch.get_num_threads(),
        'step_seconds_median': step, 'step_seconds_all': times,
        'seconds_per_image': {name: step[name] / images[name] for name in step},
        'seconds_per_network_input': {name: step[name] / inputs[name] for name in step},
        'ratio_unnas_supervised_over_darts': step['UnNAS-supervised'] / step['DARTS'],
        'ratio_unnas_rotation_over_darts_x4_per_input': step['UnNAS-rotation'] / step['DARTS-x4'],
        'ratio_unnas_rotation_over_darts_per_image': step['UnNAS-rotation'] / step['DARTS'],
        'target': 'ratio_unnas_supervised_over_darts and ratio_unnas_rotation_over_darts_x4_per_input <= 1.1; '
                  'rotation per image is ~4x by design (four rotations of every image)',
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--channels', type=int, default=8)
    parser.add_argument('--cells', type=int, default=1)
    parser.add_argument('--batch', type=int, default=16, help='images per step (rotation: 4x network inputs)')
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    warnings.filterwarnings('ignore')
    g = torch.Generator().manual_seed(0)
    n = 2 * 4 * args.batch * (args.steps + 1)  # both halves hold enough batches for DARTS-x4
    dataset = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    emit_json(_result(args, _measure(args, dataset)), args.out)


if __name__ == '__main__':
    main()
