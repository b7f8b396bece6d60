"""The sample-based experiment of UnNAS: do pretext-task accuracies rank architectures like the supervised one?

Reference: Liu et al., "Are Labels Necessary for Neural Architecture Search?", ECCV 2020, section 4 (500 sampled
architectures per space, each trained from scratch on every task; Spearman's rho between a pretext task's accuracies
and the supervised ones is > 0.8 in the paper). Here at the scale the user affords:

- in process: ``nni-labelfree correlate --archs 8 --tasks rotation,jigsaw,supervised --epochs 2 --data imagefolder
  --data-root images.tar.gz --num-images 500 --output runs/correlate`` writes ``results.json``, ``results.csv`` and
  prints a table plus rho per pretext task;
- under nnictl (``experiment_configs/unnas_correlate.yml``): every architecture x task is one trial,
  ``python3 -m nni_labelfree.experiment.correlate --trial --set key=value ...`` with ``arch_index`` and ``task``
  from ``nni.get_next_parameter()``; ``nni-labelfree correlate --collect <experiment dir>`` computes rho from the
  trials' ``correlate_trial.json`` files (or from a ``summary.json`` whose rows carry ``arch_index``, ``task`` and
  ``accuracy``; the launcher's current summary keeps fixed columns only, so pass the experiment directory).

Sampling is seeded and identical in every trial (``seed``, ``archs``): trial ``arch_index = i`` trains the i-th
sample. Each architecture is the space frozen at the sample (DARTS samples are repaired to two inputs per node).
Accuracy is measured on held-out images (``held_out_fraction`` of the ``num_images``), per task: rotation over the
four rotations, jigsaw over permutations, colorization per pixel, supervised over the true labels.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from nni_labelfree.experiment.config import merge_layers

__all__ = ['CorrelateConfig', 'resolve_correlate_config', 'sample_architectures', 'labeled_images',
           'train_and_evaluate', 'run_correlate', 'correlations', 'collect', 'main']

_logger = logging.getLogger(__name__)

TASKS = ('rotation', 'colorization', 'jigsaw', 'supervised')
CORRELATE_SPACES = ('nasbench201', 'darts')  # the cell spaces _build_space knows how to size
Reporter = Callable[[dict], None]


@dataclass
class CorrelateConfig:
    """Settings of the sample-based experiment; every key is a ``--flag`` and a ``--set key=value``."""
    space: str = 'nasbench201'          # nasbench201 | darts
    archs: int = 8                      # sampled architectures (at least 3 for a rank correlation)
    arch_index: int | None = None       # trial mode: which sample this trial trains (0..archs-1)
    tasks: Any = 'rotation,jigsaw,supervised'  # comma-separated; rho is each pretext task vs supervised
    task: str | None = None             # trial mode: the one task this trial trains
    channels: int = 8                   # width of the sampled networks
    cells_per_stage: int = 1            # NAS-Bench-201 cells per stage
    num_cells: int = 5                  # DARTS cells
    data: str = 'cifar10'               # image source (supervised needs labels: cifar10/100, or imagefolder with
    data_root: str | None = None        # class subfolders, whose names become the labels)
    data_split: str = 'train'
    download: bool = False
    num_images: int | None = 500        # images in all; held_out_fraction of them measure accuracy
    held_out_fraction: float = 0.2
    image_size: int = 32
    epochs: int = 2                     # training epochs per architecture and task (paper: 100 on CIFAR)
    batch_size: int = 32                # images per batch (rotation: 4x network inputs)
    learning_rate: float = 0.025        # paper: 0.025 (rot, jig), 0.1 (cls, col); SGD, cosine, nesterov
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0                       # sampling, weights, pretext transforms, split
    num_threads: int | None = None
    output_dir: str | None = None


def resolve_correlate_config(*layers: Mapping[str, Any] | None) -> CorrelateConfig:
    """Merge layers onto the defaults (later wins) and validate; unknown keys and bad values raise ``ValueError``."""
    merged = merge_layers(layers, CorrelateConfig, 'correlate')
    config = CorrelateConfig(**merged)
    config.tasks = _task_list(config.tasks)
    _validate(config)
    return config


def _task_list(tasks: Any) -> list[str]:
    names = [t.strip() for t in tasks.split(',')] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f'Unknown task(s) {unknown or names!r}; expected a comma-separated list of '
                         f'{", ".join(TASKS)}, e.g. --tasks rotation,jigsaw,supervised.')
    return list(dict.fromkeys(names))


def _validate(config: CorrelateConfig) -> None:
    if config.space not in CORRELATE_SPACES:
        raise ValueError(f'The correlation study samples cells of {" or ".join(CORRELATE_SPACES)}, not '
                         f'{config.space!r}; use one of those.')
    if not isinstance(config.archs, int) or config.archs < 3:
        raise ValueError(f'archs must be an integer >= 3 (a rank correlation of fewer architectures means nothing), '
                         f'got {config.archs!r}. Use e.g. --archs 8.')
    for key in ('epochs', 'batch_size', 'channels', 'cells_per_stage', 'num_cells', 'image_size'):
        if not isinstance(getattr(config, key), int) or getattr(config, key) < 1:
            raise ValueError(f'{key} must be a positive integer, got {getattr(config, key)!r}.')
    if not 0 < config.held_out_fraction < 1:
        raise ValueError(f'held_out_fraction must lie in (0, 1), got {config.held_out_fraction!r}.')
    if config.task is not None and config.task not in TASKS:
        raise ValueError(f'Unknown task {config.task!r}; expected one of {", ".join(TASKS)}.')
    if config.arch_index is not None and not 0 <= config.arch_index < config.archs:
        raise ValueError(f'arch_index must lie in 0..{config.archs - 1} (archs={config.archs}), '
                         f'got {config.arch_index!r}.')


# -- architectures ------------------------------------------------------------------------------------------------

def _build_space(config: CorrelateConfig, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    from nni_labelfree.search_spaces import create_space
    if config.space == 'darts':
        return create_space('darts', width=config.channels, num_cells=config.num_cells, num_classes=num_classes,
                            in_channels=in_channels)
    return create_space(config.space, channels=config.channels, cells_per_stage=config.cells_per_stage,
                        num_classes=num_classes, in_channels=in_channels)


def sample_architectures(space: nn.Module, count: int, seed: int, max_tries: int = 10_000) -> list[dict]:
    """``count`` distinct uniform samples of ``space``'s choices, seeded; repaired (DARTS) or filtered (NB201).

    The same ``(space, count, seed)`` always gives the same list, so every nnictl trial agrees on arch ``i``.
    """
    choices = space.simplify()
    rng = random.Random(seed)
    repair = getattr(space, 'repair', None)
    keep = getattr(space, 'sample_filter', None)
    archs: list[dict] = []
    for _ in range(max_tries):
        sample = {label: rng.choice(list(choice.values)) for label, choice in sorted(choices.items())}
        if callable(repair):
            sample = repair(sample, rng)
        elif callable(keep) and not keep(sample):
            continue
        if sample not in archs:
            archs.append(sample)
        if len(archs) == count:
            return archs
    raise ValueError(f'Could only draw {len(archs)} distinct architectures of {count} requested; the space is too '
                     'small for that many. Use fewer --archs.')


# -- data ---------------------------------------------------------------------------------------------------------

def labeled_images(config: CorrelateConfig) -> Dataset:
    """The configured images with true labels where known (imagefolder: the class subfolder names)."""
    from nni_labelfree.data.folder_labels import labeled_image_source
    return labeled_image_source(config.data, root=config.data_root, split=config.data_split, download=config.download,
                                num_images=config.num_images, seed=config.seed, image_size=config.image_size)


def _split(images: Dataset, config: CorrelateConfig) -> tuple[Dataset, Dataset]:
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed)).tolist()
    held = max(1, int(round(len(images) * config.held_out_fraction)))
    if len(images) - held < config.batch_size:
        raise ValueError(f'{len(images)} images leave {len(images) - held} for training, fewer than batch_size '
                         f'{config.batch_size}. Use more --num-images or a smaller --batch-size.')
    return Subset(images, sorted(order[held:])), Subset(images, sorted(order[:held]))


def _task_data(task: str, base: Dataset, seed: int, num_classes: int | None) -> Dataset:
    from nni_labelfree.data import TrueLabelDataset, pretext_dataset
    if task == 'supervised':
        return TrueLabelDataset(base, num_classes)
    return pretext_dataset(task, base, seed=seed)


# -- training -----------------------------------------------------------------------------------------------------

def _network(config: CorrelateConfig, arch: dict, task: str, train_data: Dataset) -> nn.Module:
    from nni_labelfree.heads import PretextNetwork
    space = _build_space(config, in_channels=1 if task == 'colorization' else 3)
    frozen = copy.deepcopy(space.freeze(arch))
    first = train_data[0][0]
    tiles = int(first.shape[0]) if task == 'jigsaw' else 1
    return PretextNetwork(frozen, task, int(train_data.num_classes), tiles=tiles)


def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.train(False)  # evaluation mode (BatchNorm running stats)
    correct = total = 0
    with torch.no_grad():
        for inputs, targets in loader:
            predicted = model(inputs).argmax(1)
            correct += int((predicted == targets).sum())
            total += targets.numel()
    return correct / max(total, 1)


def train_and_evaluate(model: nn.Module, train_data: Dataset, eval_data: Dataset, config: CorrelateConfig,
                       seed: int, reporter: Reporter | None = None) -> list[dict]:
    """SGD (nesterov, cosine per epoch) from scratch; per epoch ``{'epoch', 'train_loss', 'accuracy'}``."""
    collate = getattr(train_data, 'collate_fn', None)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(train_data, batch_size=config.batch_size, shuffle=True, drop_last=True, collate_fn=collate,
                       generator=generator)
    held = DataLoader(eval_data, batch_size=config.batch_size, collate_fn=collate)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    history = []
    for epoch in range(config.epochs):
        model.train()
        losses = []
        for inputs, targets in train:
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            losses.append(loss.item())
        schedule.step()
        row = {'epoch': epoch, 'train_loss': sum(losses) / max(len(losses), 1), 'accuracy': _accuracy(model, held)}
        history.append(row)
        if reporter is not None:
            reporter(row)
    return history


def run_one(config: CorrelateConfig, archs: Sequence[dict], index: int, task: str,
            split: tuple[Dataset, Dataset], reporter: Reporter | None = None) -> dict:
    """Train architecture ``index`` on ``task`` and measure its held-out accuracy."""
    seed = config.seed * 1_000_003 + index * 101 + TASKS.index(task)
    num_classes = getattr(getattr(split[0], 'dataset', None), 'num_true_classes', None)
    train_data = _task_data(task, split[0], seed, num_classes)
    eval_data = _task_data(task, split[1], seed + 1, num_classes)
    torch.manual_seed(seed)
    start = time.time()
    model = _network(config, archs[index], task, train_data)
    history = train_and_evaluate(model, train_data, eval_data, config, seed, reporter)
    return {'arch_index': index, 'task': task, 'accuracy': history[-1]['accuracy'],
            'train_loss': history[-1]['train_loss'], 'wall_time': time.time() - start,
            'arch': json.dumps(archs[index], sort_keys=True), 'history': history}


# -- correlation and outputs --------------------------------------------------------------------------------------

def correlations(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Spearman's rho of each pretext task's accuracies vs the supervised ones, over archs that have both.

    NaN when fewer than 2 archs have both, or when one side is constant (e.g. every arch at chance after a
    too-short training); the table says so.
    """
    from nni_labelfree.metrics import spearman_rho
    acc: dict[str, dict[int, float]] = {}
    for row in rows:
        acc.setdefault(row['task'], {})[int(row['arch_index'])] = float(row['accuracy'])
    if 'supervised' not in acc:
        raise ValueError('No supervised results: rho compares each pretext task with the supervised task. '
                         'Add supervised to --tasks.')
    out = {}
    for task in (t for t in TASKS if t in acc and t != 'supervised'):
        common = sorted(set(acc[task]) & set(acc['supervised']))
        out[task] = spearman_rho([acc[task][i] for i in common], [acc['supervised'][i] for i in common])
    return out


def _table(rows: Sequence[Mapping[str, Any]], rho: Mapping[str, float]) -> str:
    tasks = [t for t in TASKS if any(r['task'] == t for r in rows)]
    by_arch: dict[int, dict[str, float]] = {}
    for row in rows:
        by_arch.setdefault(int(row['arch_index']), {})[row['task']] = float(row['accuracy'])
    lines = ['arch  ' + '  '.join(f'{t:>12}' for t in tasks)]
    for index in sorted(by_arch):
        lines.append(f'{index:<4}  ' + '  '.join(f'{by_arch[index].get(t, math.nan):12.4f}' for t in tasks))
    for task, value in rho.items():
        note = '  (NaN: fewer than 2 archs, or constant accuracies; train longer)' if value != value else ''
        lines.append(f'Spearman rho {task} vs supervised: {value:.4f}{note}')
    return '\n'.join(lines)


def write_outputs(rows: Sequence[Mapping[str, Any]], rho: Mapping[str, float], out: Path,
                  config: Mapping[str, Any] | None = None) -> None:
    """``results.json`` (rows, rho, config) and ``results.csv`` (one row per arch x task) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {'rho': {k: (None if v != v else v) for k, v in rho.items()}, 'rows': list(rows), 'config': config}
    (out / 'results.json').write_text(json.dumps(payload, indent=2) + '\n')
    with open(out / 'results.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=['arch_index', 'task', 'accuracy', 'train_loss', 'wall_time',
                                                    'arch'], extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)


def run_correlate(config: CorrelateConfig, output_dir: str | Path, images: Dataset | None = None) -> dict:
    """The whole experiment in this process; returns ``{'rho': ..., 'rows': ..., 'archs': ...}``.

    ``images`` (items ``(image, true label)``) replaces the configured image source, e.g. generated images.
    """
    if 'supervised' not in config.tasks or len(config.tasks) < 2:
        raise ValueError(f'tasks {config.tasks} need supervised plus at least one pretext task to correlate, '
                         'e.g. --tasks rotation,supervised.')
    archs = sample_architectures(_build_space(config), config.archs, config.seed)
    split = _split(labeled_images(config) if images is None else images, config)
    rows = []
    for index in range(len(archs)):
        for task in config.tasks:
            row = run_one(config, archs, index, task, split)
            _logger.info('arch %d %s: accuracy %.4f (%.1fs)', index, task, row['accuracy'], row['wall_time'])
            rows.append({k: v for k, v in row.items() if k != 'history'})
    rho = correlations(rows)
    write_outputs(rows, rho, Path(output_dir), dataclasses.asdict(config))
    print(_table(rows, rho), flush=True)
    return {'rho': rho, 'rows': rows, 'archs': archs}


# -- nnictl trials and collection ---------------------------------------------------------------------------------

def run_trial(overrides: Mapping[str, Any]) -> dict:
    """One architecture x task as an NNI trial: parameters ``arch_index`` and ``task`` from the tuner."""
    import nni
    params = nni.get_next_parameter() or {}  # must come before any report
    config = resolve_correlate_config(overrides, params)
    if config.arch_index is None or config.task is None:
        raise ValueError('A correlate trial needs arch_index and task (from the searchSpace or --set).')
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir or os.environ.get('NNI_OUTPUT_DIR', 'runs/correlate_trial'))
    archs = sample_architectures(_build_space(config), config.archs, config.seed)
    split = _split(labeled_images(config), config)

    def report(epoch_row: dict) -> None:
        nni.report_intermediate_result({'default': epoch_row['accuracy'], **epoch_row})

    row = run_one(config, archs, config.arch_index, config.task, split, report)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'correlate_trial.json').write_text(json.dumps(row, indent=2) + '\n')
    nni.report_final_result({'default': row['accuracy'], **{k: v for k, v in row.items() if k != 'history'}})
    return row


def _rows_from_summary(rows: list) -> list[dict]:
    finals = [r for r in rows if isinstance(r, dict) and 'arch_index' in r and 'task' in r and 'accuracy' in r]
    if not finals:
        raise ValueError('summary.json holds no correlate results (rows with arch_index, task, accuracy); pass the '
                         'experiment directory instead, whose trials wrote correlate_trial.json.')
    return finals


def collect(path: str | Path, output_dir: str | Path | None = None) -> dict:
    """rho from finished trials: an experiment dir (``trials/*/correlate_trial.json``) or a ``summary.json``."""
    path = Path(path).expanduser()
    if path.is_file():
        rows = _rows_from_summary(json.loads(path.read_text()))
    else:
        files = sorted(path.glob('**/correlate_trial.json'))
        if not files:
            raise FileNotFoundError(f'No correlate_trial.json under {path}; pass the NNI experiment directory '
                                    '(e.g. ~/nni-experiments/<id>) of a finished unnas_correlate.yml experiment.')
        rows = [{k: v for k, v in json.loads(f.read_text()).items() if k != 'history'} for f in files]
    rho = correlations(rows)
    write_outputs(rows, rho, Path(output_dir) if output_dir else (path.parent if path.is_file() else path))
    print(_table(rows, rho), flush=True)
    return {'rho': rho, 'rows': rows}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``nni-labelfree correlate`` (also used by ``python -m nni_labelfree.experiment.correlate``)."""
    from nni_labelfree.experiment.config import parse_value
    parser.add_argument('--output', '-o', default=None, help='output folder (default: runs/correlate-<space>-s<seed>)')
    parser.add_argument('--collect', default=None, metavar='PATH',
                        help='compute rho from a finished nnictl experiment directory or its summary.json')
    parser.add_argument('--trial', action='store_true', help='run one arch x task as an NNI trial (nnictl)')
    parser.add_argument('--set', dest='set_flags', action='append', default=[], metavar='KEY=VALUE')
    for f in dataclasses.fields(CorrelateConfig):
        if f.name != 'output_dir':
            parser.add_argument(f'--{f.name.replace("_", "-")}', dest=f.name, type=parse_value,
                                default=argparse.SUPPRESS, help=f'(default: {f.default!r})')


def run_from_args(args: argparse.Namespace) -> int:
    """Dispatch parsed flags: ``--collect``, ``--trial`` or the in-process experiment."""
    from nni_labelfree.experiment.trial import parse_set_flags
    reserved = ('command', 'output', 'collect', 'trial', 'set_flags')
    overrides = {**{k: v for k, v in vars(args).items() if k not in reserved}, **parse_set_flags(args.set_flags)}
    if args.collect:
        collect(args.collect, args.output)
        return 0
    if args.trial:
        run_trial(overrides)
        return 0
    config = resolve_correlate_config(overrides)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    output = args.output or f'runs/correlate-{config.space}-s{config.seed}'
    config.output_dir = output
    run_correlate(config, output)
    print(f'Results in {output}/ (results.json, results.csv)')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m nni_labelfree.experiment.correlate``; returns the exit code (2 with one message on bad input)."""
    parser = argparse.ArgumentParser(prog='nni_labelfree.experiment.correlate', description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[%(asctime)s] %(levelname)s %(name)s: %(message)s')
    try:
        return run_from_args(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        for stream in (sys.stdout, sys.stderr):
            print(f'nni-labelfree correlate: error: {err}', file=stream, flush=True)
        return 2


if __name__ == '__main__':
    sys.exit(main())
