"""The nnictl trial entry point of a label-free search: ``python3 -m nni_labelfree.experiment.trial``.

The configuration is the defaults, then ``--set key=value`` flags from the experiment's ``trialCommand``, then the
parameters NNI's tuner chose (``nni.get_next_parameter()``). Every epoch's metrics go to the web UI as an
intermediate result (``default`` = Kendall tau when a NAS-Bench-201 table is available, else the random-label
training accuracy); the final result carries the exported architecture. Artifacts go to ``$NNI_OUTPUT_DIR``.
A bad configuration ends the trial with one clear message and a non-zero exit, so the web UI shows FAILED and the
trial log ends with the reason.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from nni_labelfree.experiment.config import parse_value

__all__ = ['main', 'parse_set_flags', 'trial_main']

_logger = logging.getLogger(__name__)


def parse_set_flags(pairs: Sequence[str]) -> dict[str, Any]:
    """``['epochs=3', 'data=noise']`` to ``{'epochs': 3, 'data': 'noise'}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition('=')
        if not sep or not key:
            raise ValueError(f'--set expects key=value, got {pair!r}.')
        out[key.strip()] = parse_value(value)
    return out


def _reporter(metrics: dict) -> None:
    import nni
    nni.report_intermediate_result({k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def run_trial(set_flags: Sequence[str]) -> dict:
    """Resolve this trial's configuration, run the search, report the final result."""
    import nni
    from nni_labelfree.experiment.config import flatten_parameter_groups, resolve_config
    from nni_labelfree.experiment.search import run_search

    params = nni.get_next_parameter() or {}  # must come before any report
    config = resolve_config(parse_set_flags(set_flags), flatten_parameter_groups(params))
    if config.num_threads:
        import torch
        torch.set_num_threads(config.num_threads)
    output_dir = Path(config.output_dir or os.environ.get('NNI_OUTPUT_DIR', 'runs/trial'))
    config.output_dir = str(output_dir)
    result = run_search(config, output_dir, reporter=_reporter)
    final = {k: v for k, v in result.items() if k != 'top'}
    final['arch'] = final.get('nb201_string') or str(final['arch'])
    nni.report_final_result(final)
    return result


def trial_main(argv: Sequence[str] | None, *, prog: str, description: str, config_module: str,
               run: Callable[[Sequence[str]], Any], failure: str) -> int:
    """An nnictl trial's ``main``: parse repeatable ``--set key=value`` flags, log at INFO, call ``run(flags)``.

    Bad input (``ValueError``, ``FileNotFoundError``, ``TypeError``) prints ``'{failure}: {error}'`` to stdout
    (trial.log) and stderr (trial.stderr) and returns exit code 2, so the web UI shows FAILED with the reason;
    success returns 0.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument('--set', dest='set_flags', action='append', default=[], metavar='KEY=VALUE',
                        help=f'configuration key (see {config_module}); repeatable')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[%(asctime)s] %(levelname)s %(name)s: %(message)s')
    warnings.filterwarnings('ignore', message=r'.*is found to be not a nn\.Module')
    try:
        run(args.set_flags)
    except (ValueError, FileNotFoundError, TypeError) as err:
        for stream in (sys.stdout, sys.stderr):
            print(f'{failure}: {err}', file=stream, flush=True)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    return trial_main(argv, prog='nni_labelfree.experiment.trial', description=__doc__.splitlines()[0],
                      config_module='nni_labelfree.experiment.config', run=run_trial,
                      failure='nni-labelfree trial failed')


if __name__ == '__main__':
    sys.exit(main())
