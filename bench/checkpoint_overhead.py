"""Cost of resumability and multi-process training of an RLNAS search on CPU.

1. Checkpoint overhead: one search through the search runner (``run_search``) at the CPU quickstart's scale
   (NAS-Bench-201 C=16, one cell per stage, 200 images, batch 64, one thread). Per epoch, the time training waits
   for the resumable end-of-epoch checkpoint (``ResumableCheckpoint.save_seconds``: Lightning's state dump and the
   serialisation to memory) as a percentage of the epoch's training time; the target is < 3%. Also reported: the
   background writer's time per checkpoint (write, fsync, rename, prune; overlapped with training) and the same
   percentage had it been synchronous. The background thread still competes with training for the cores, so an
   A/B comparison is reported too: the training wall time of searches with and without the checkpoint callback,
   alternated ``--rounds`` times (noisy on a loaded machine; per-round numbers are included). Epoch times exclude
   the per-epoch Kendall-tau ranking (``benchmark_table=None``), which makes every percentage larger than in a
   search that computes it.
2. DDP throughput: training images per second of the same search with 2 DDP processes (gloo, one thread each) and
   with 1 process (two threads, and one thread), on the same 2 cores; each in its own subprocess, same per-process
   batch. Epoch 1 is a warm-up and not counted. On CPU the processes compete for the cores and the gradient
   all-reduce adds a cost per step: DDP is for agreement across ranks here, GPUs are where it scales.

    python -m bench.checkpoint_overhead --out bench/results/checkpoint_overhead.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]


class EpochTimer(pl.Callback):
    """Wall time of every training epoch (start hook to end hook; the checkpoint callback runs after it)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = self.train_seconds = 0.0
        self.checkpoint_callback = self.checkpoint_io = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_seconds = -time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.train_seconds += time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        self.checkpoint_callback = trainer.checkpoint_callback
        self.checkpoint_io = trainer.strategy.checkpoint_io


def _config(args, **overrides):
    from nni_labelfree.experiment.config import resolve_config
    return resolve_config({'data': 'noise', 'channels': args.channels, 'cells_per_stage': args.cells,
                           'num_images': args.num_images, 'batch_size': args.batch, 'epochs': args.epochs,
                           'benchmark_table': None, 'seed': 0, 'accelerator': 'cpu'}, overrides)


def _timed_search(config, output: Path) -> EpochTimer:
    from nni_labelfree.experiment.search import run_search
    timer = EpochTimer()
    run_search(config, output, extra_callbacks=[timer])
    return timer


def _ab_rounds(args) -> dict:
    """Training wall time with and without the end-of-epoch checkpoint, alternated."""
    from nni_labelfree.experiment.checkpoint import ResumableCheckpoint
    seconds: dict[str, list[float]] = {'with': [], 'without': []}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            for name in ('with', 'without'):
                with contextlib.ExitStack() as stack:
                    if name == 'without':
                        stack.enter_context(mock.patch.object(ResumableCheckpoint, 'on_train_epoch_end'))
                    timer = _timed_search(_config(args, num_threads=1), Path(tmp) / f'{name}{index}')
                seconds[name].append(timer.train_seconds)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {'train_seconds': seconds, 'train_seconds_median': medians,
            'overhead_percent': 100 * (medians['with'] / medians['without'] - 1)}


def checkpoint_overhead(args) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        timer = _timed_search(_config(args, num_threads=1), Path(tmp) / 'run')
        sizes = [p.stat().st_size for p in (Path(tmp) / 'run' / 'checkpoints').glob('search_epoch*.ckpt')]
    saves, writes = timer.checkpoint_callback.save_seconds, timer.checkpoint_io.write_seconds
    percent = [100 * s / e for s, e in zip(saves, timer.seconds)]
    synchronous = [100 * (s + w) / e for s, w, e in zip(saves, writes, timer.seconds)]
    return {'space': f'nasbench201 C={args.channels} N={args.cells}', 'num_images': args.num_images,
            'batch': args.batch, 'epochs': args.epochs, 'threads': 1,
            'checkpoint_mb': round(max(sizes) / 2 ** 20, 3),
            'epoch_seconds_median': statistics.median(timer.seconds),
            'blocking_seconds_median': statistics.median(saves),
            'background_write_seconds_median': statistics.median(writes),
            'overhead_percent_median': statistics.median(percent), 'overhead_percent_max': max(percent),
            'overhead_percent_total': 100 * sum(saves) / sum(timer.seconds),
            'if_synchronous_percent_median': statistics.median(synchronous), 'target_percent': 3.0,
            'a_b': _ab_rounds(args) if args.rounds else None}


def _worker(args) -> None:
    """One throughput run (``--worker-out``); under DDP, Lightning reruns this command as rank 1."""
    ddp = args.devices > 1
    config = _config(args, devices=args.devices, num_threads=args.threads,
                     lightning_strategy='ddp' if ddp else 'auto')
    torch.set_num_threads(config.num_threads)
    output = Path(args.worker_out).with_suffix('.run')
    timer = _timed_search(config, output)
    if int(os.environ.get('LOCAL_RANK', 0)) == 0:
        Path(args.worker_out).write_text(json.dumps({'epoch_seconds': timer.seconds}))


def ddp_throughput(args) -> dict:
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, devices, threads in (('1 process x 2 threads', 1, 2), ('1 process x 1 thread', 1, 1),
                                       ('2 DDP processes x 1 thread', 2, 1)):
            out = Path(tmp) / f'{devices}x{threads}.json'
            command = [sys.executable, '-m', 'bench.checkpoint_overhead', '--worker-out', str(out),
                       '--devices', str(devices), '--threads', str(threads), *_shared_flags(args)]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
            if done.returncode != 0 or not out.exists():
                raise SystemExit(f'{name} failed:\n{done.stderr[-3000:]}')
            seconds = json.loads(out.read_text())['epoch_seconds'][1:]  # epoch 1 warms up
            runs[name] = {'epoch_seconds_median': statistics.median(seconds),
                          'images_per_second': args.num_images / statistics.median(seconds)}
    two_threads, one_thread, ddp = runs.values()
    return {'per_process_batch': args.batch, 'num_images': args.num_images, 'epochs': args.epochs,
            'cores': os.cpu_count(), 'runs': runs,
            'ddp_speedup_vs_1_process_2_threads': ddp['images_per_second'] / two_threads['images_per_second'],
            'ddp_speedup_vs_1_process_1_thread': ddp['images_per_second'] / one_thread['images_per_second']}


def _shared_flags(args) -> list[str]:
    return ['--channels', str(args.channels), '--cells', str(args.cells), '--num-images', str(args.num_images),
            '--batch', str(args.batch), '--epochs', str(args.epochs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--channels', type=int, default=16)
    parser.add_argument('--cells', type=int, default=1)
    parser.add_argument('--num-images', type=int, default=200)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--rounds', type=int, default=3, help='A/B rounds with and without checkpoints (0: skip)')
    parser.add_argument('--ddp-num-images', type=int, default=512, help='images of the throughput runs')
    parser.add_argument('--timeout', type=float, default=900, help='seconds per throughput run')
    parser.add_argument('--skip-ddp', action='store_true')
    parser.add_argument('--out', default=None)
    parser.add_argument('--worker-out', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--devices', type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument('--threads', type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings('ignore')
    if args.worker_out:
        return _worker(args)
    result = {'checkpoint': checkpoint_overhead(args), 'load_average_at_start': os.getloadavg()}
    if not args.skip_ddp:
        args.num_images = args.ddp_num_images
        result['ddp'] = ddp_throughput(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + '\n')


if __name__ == '__main__':
    main()
