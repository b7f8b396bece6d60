"""The ``nni-labelfree experiment`` command line: start, resume or view an NNI experiment, optionally chain a retrain.

::

    nni-labelfree experiment experiment_configs/quickstart.yml [--port 8080] [--keep-ui] [--timeout 600]
    nni-labelfree experiment --resume <id> [--port 8080]      # like nnictl resume <id>, then the summary table
    nni-labelfree experiment --view <id> [--port 8080]        # like nnictl view <id>: read-only web UI + table
    nni-labelfree experiment search.yml --then-retrain experiment_configs/retrain_nb201.yml --retrain-seeds 0,1
    nni-labelfree experiment search.yml --then-retrain cpu --retrain-set data=cifar10

The exit status is 0 when every trial SUCCEEDED, 1 otherwise, 2 for bad input (one message, before any start).
"""
from __future__ import annotations

import argparse
import logging
import os

__all__ = ['add_experiment_arguments', 'run_from_args']

_logger = logging.getLogger(__name__)


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers such as 0,1,2, got {text!r}') from None


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``experiment`` subcommand's arguments."""
    parser.add_argument('config', nargs='?', default=None,
                        help='experiment YAML, e.g. experiment_configs/quickstart.yml (not with --resume/--view)')
    parser.add_argument('--resume', metavar='ID', default=None, help='resume a stopped experiment (nnictl resume)')
    parser.add_argument('--view', metavar='ID', default=None,
                        help='serve a stopped experiment read-only and print its table (nnictl view); Ctrl-C ends')
    parser.add_argument('--port', type=int, default=int(os.environ.get('NNI_LABELFREE_PORT', 8080)))
    parser.add_argument('--keep-ui', action='store_true',
                        default=os.environ.get('KEEP_UI', '') not in ('', '0'),
                        help='keep the web UI up after the experiment ends (or set KEEP_UI=1)')
    parser.add_argument('--timeout', type=float, default=None, help='stop the experiment after this many seconds')
    parser.add_argument('--then-retrain', metavar='RETRAIN_YML_OR_PRESET', default=None,
                        help='after the search, retrain every SUCCEEDED trial\'s arch.json over seeds '
                             '(a retrain experiment YAML, or a retrain preset such as cpu)')
    parser.add_argument('--retrain-seeds', type=_seed_list, default=None, metavar='0,1,...',
                        help='seeds of the chained retrain (default: the retrain YAML\'s, else 0)')
    parser.add_argument('--retrain-set', action='append', default=[], metavar='KEY=VALUE',
                        help='extra --set flag for the retrain trials (repeatable), e.g. data=cifar10')


def _check_mode(args: argparse.Namespace) -> str:
    given = [name for name in ('config', 'resume', 'view') if getattr(args, name)]
    if len(given) != 1:
        raise ValueError('nni-labelfree experiment takes exactly one of: a config YAML, --resume <id>, --view <id> '
                         f'(got {", ".join(given) or "none"}).')
    if given[0] == 'view' and args.then_retrain:
        raise ValueError('--then-retrain runs after a search finishes; it does not apply to --view.')
    return given[0]


def run_from_args(args: argparse.Namespace) -> int:
    """Run the ``experiment`` subcommand; returns the exit status."""
    from nni_labelfree.experiment import launcher
    mode = _check_mode(args)
    if mode == 'view':
        launcher.view_experiment(args.view, port=args.port, keep_ui=True)
        return 0
    chain = dict(then_retrain=args.then_retrain, retrain_seeds=args.retrain_seeds, retrain_set=args.retrain_set)
    if mode == 'resume':
        rows = launcher.resume_experiment(args.resume, port=args.port, keep_ui=args.keep_ui, timeout=args.timeout,
                                          **chain)
    else:
        rows = launcher.run_experiment(args.config, port=args.port, keep_ui=args.keep_ui, timeout=args.timeout,
                                       **chain)
    return 0 if rows and all(r['status'] == 'SUCCEEDED' for r in rows) else 1
