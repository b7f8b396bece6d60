"""The ``nni-labelfree`` command.

- ``nni-labelfree search --strategy rlnas --space nasbench201 --data noise --output runs/x``: one search without
  nnictl; writes ``arch.json``, ``config.json``, ``metrics.json`` and ``checkpoints/`` to the output folder.
  Every key of :class:`~nni_labelfree.experiment.config.SearchConfig` is a flag (``--num-images 500``).
  Rerunning a killed search with the same flags and ``--output`` resumes it (``--resume false`` starts over);
  ``--accelerator cpu --devices 2 --lightning-strategy ddp`` trains with two DDP processes.
- ``nni-labelfree experiment experiment_configs/quickstart.yml [--port 8080] [--keep-ui] [--then-retrain X]``: an
  NNI experiment with the web UI, followed in the terminal, then a summary table; ``--resume <id>`` / ``--view <id>``
  mirror nnictl (see :mod:`nni_labelfree.experiment.launcher_cli`).
- ``nni-labelfree retrain --arch runs/x/arch.json --data cifar10 [--preset nb201|darts|cpu] --output D``: train an
  exported architecture from scratch with real labels (see :mod:`nni_labelfree.experiment.retrain`).
- ``nni-labelfree trial --set key=value ...``: the trial entry point nnictl runs.
- ``nni-labelfree correlate --archs 8 --tasks rotation,jigsaw,supervised --epochs 2 --data imagefolder
  --data-root images.tar.gz --num-images 500 --output runs/corr``: UnNAS's sample-based experiment (Spearman's rho
  of each pretext task's accuracies vs the supervised ones); ``--collect <experiment dir>`` after an nnictl run of
  ``experiment_configs/unnas_correlate.yml``. See :mod:`nni_labelfree.experiment.correlate`.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import warnings
from typing import Sequence

__all__ = ['main', 'build_parser']

_logger = logging.getLogger(__name__)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from nni_labelfree.experiment.config import SearchConfig, parse_value
    for f in dataclasses.fields(SearchConfig):
        if f.name == 'output_dir':
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parser.add_argument(f'--{f.name.replace("_", "-")}', dest=f.name, type=parse_value,
                            default=argparse.SUPPRESS, help=f'(default: {default!r})')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nni-labelfree``."""
    parser = argparse.ArgumentParser(prog='nni-labelfree', description='Label-free NAS on NNI 3.0.')
    sub = parser.add_subparsers(dest='command', required=True)
    search = sub.add_parser('search', help='run one search without nnictl')
    search.add_argument('--output', '-o', default=None, help='output folder (default: runs/<strategy>-<space>-<data>-s<seed>)')
    _add_config_flags(search)
    experiment = sub.add_parser('experiment', help='run an nnictl experiment with the web UI and print a summary')
    from nni_labelfree.experiment.launcher_cli import add_experiment_arguments
    add_experiment_arguments(experiment)
    correlate = sub.add_parser('correlate', help='sample archs, train each on pretext and supervised tasks, '
                                                 'report Spearman rho (UnNAS sample-based study)')
    from nni_labelfree.experiment.correlate import add_arguments
    add_arguments(correlate)
    retrain = sub.add_parser('retrain', help='train an exported architecture from scratch with real labels')
    from nni_labelfree.experiment.retrain import add_arguments as add_retrain_arguments
    add_retrain_arguments(retrain)
    trial = sub.add_parser('trial', help='trial entry point (used by nnictl)')
    trial.add_argument('--set', dest='set_flags', action='append', default=[], metavar='KEY=VALUE')
    return parser


def _run_search(args: argparse.Namespace) -> int:
    from nni_labelfree.experiment.config import resolve_config
    from nni_labelfree.experiment.search import process_rank, run_search
    overrides = {k: v for k, v in vars(args).items() if k not in ('command', 'output')}
    config = resolve_config(overrides)
    if config.num_threads:
        import torch
        torch.set_num_threads(config.num_threads)
    output = args.output or f'runs/{config.strategy}-{config.space}-{config.data}-s{config.seed}'
    config.output_dir = output
    result = run_search(config, output)
    if process_rank() != 0:  # a DDP rank Lightning relaunched: rank 0 reports
        return 0
    print(f'Exported architecture: {result.get("nb201_string") or result.get("genotype") or result["arch"]}')
    for key in ('angle', 'fitness', 'selection', 'test_acc', 'kendall_tau', 'skip_connections', 'train_loss',
                'wall_time'):
        if key in result:
            print(f'  {key}: {result[key]:.4f}' if isinstance(result[key], float) else f'  {key}: {result[key]}')
    print(f'Artifacts in {output}/ (arch.json, config.json, metrics.json, checkpoints/)')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nni-labelfree`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[%(asctime)s] %(levelname)s %(name)s: %(message)s')
    warnings.filterwarnings('ignore', message=r'.*is found to be not a nn\.Module')
    try:
        if args.command == 'search':
            return _run_search(args)
        if args.command == 'correlate':
            from nni_labelfree.experiment.correlate import run_from_args
            return run_from_args(args)
        if args.command == 'retrain':
            from nni_labelfree.experiment.retrain import run_from_args as run_retrain_from_args
            return run_retrain_from_args(args)
        if args.command == 'experiment':
            from nni_labelfree.experiment.launcher_cli import run_from_args as run_experiment_from_args
            return run_experiment_from_args(args)
        from nni_labelfree.experiment.trial import main as trial_main
        return trial_main([f'--set={pair}' for pair in args.set_flags])
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f'nni-labelfree: error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
