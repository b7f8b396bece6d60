"""``make bench``: every benchmark, results as JSON in bench/results/ and a Markdown summary for the README.

    python -m bench.run_all                 # all (search quality: 2 data x 3 seeds x 15 min, two at a time)
    BENCH_QUALITY_MINUTES=2 python -m bench.run_all   # a quick pass
    BENCH_SKIP_QUALITY=1 python -m bench.run_all      # speed benchmarks only
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / 'results'


def _run(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', f'bench.{module}', *args], cwd=RESULTS.parents[1])


def speed_benchmarks() -> None:
    for module, args in (('angle_speed', ['--channels', '16', '--cells', '5']),
                         ('step_time', ['--channels', '16', '--cells', '1', '--steps', '60', '--rounds', '8']),
                         ('checkpoint_overhead', []),
                         ('rlnas_darts', []),
                         ('evolution_constraint', []),
                         ('unnas_step_time', ['--channels', '8', '--cells', '1', '--batch', '16', '--steps', '10',
                                              '--rounds', '2']),
                         ('fractal_speed', ['--categories', '10', '--images', '25000', '--repeats', '3']),
                         ('trial_overhead', ['--images', '2000', '--epochs', '5', '--rounds', '5']),
                         ('sgas_speed', []),
                         ('gpu_dispatch', ['--trials', '6', '--rounds', '2'])):
        if _run(module, *args, '--out', str(RESULTS / f'{module}.json')).wait() != 0:
            raise SystemExit(f'benchmark {module} failed')
    pinas_args = ['--channels', '16', '--cells', '1', '--batch', '64', '--steps', '20', '--rounds', '5',
                  '--queues', '49152,4096', '--teacher-precision', 'bfloat16', '--queue-precision', 'bfloat16',
                  '--both-precisions']
    if _run('pinas_step_time', *pinas_args, '--out', str(RESULTS / 'pinas_step_time_precision.json')).wait() != 0:
        raise SystemExit('benchmark pinas_step_time failed')


def quality_benchmarks(minutes: float, seeds=(0, 1, 2), parallel: int = 2) -> None:
    jobs = [(data, seed) for data in ('imagefolder', 'noise') for seed in seeds]
    running: list[subprocess.Popen] = []
    for data, seed in jobs:
        if len(running) >= parallel:
            running.pop(0).wait()
        running.append(_run('search_quality', '--data', data, '--seed', str(seed), '--minutes', str(minutes),
                            '--out', str(RESULTS / 'search_quality' / f'{data}_s{seed}')))
    for job in running:
        job.wait()


def anatomy_benchmarks() -> None:
    """What the quality runs' angles are made of (bench.angle_anatomy), per data source."""
    for data in ('imagefolder', 'noise'):
        saved = (RESULTS / 'search_quality').glob(f'{data}_s*/checkpoints/supernet_final.pt')
        runs = sorted(str(p.parents[1].relative_to(RESULTS.parents[1])) for p in saved)  # _run's cwd
        out = RESULTS / f'angle_anatomy_{data}.json'
        if runs and _run('angle_anatomy', '--runs', *runs, '--out', str(out)).wait():
            raise SystemExit('benchmark angle_anatomy failed')


def quality_table() -> str:
    """Median (min..max) over seeds of each policy's statistics and the training-free rules, per data source."""
    lines = ['| data | scorer | Kendall tau | tau within equal size | top-1 cell acc | final random-label loss |',
             '|---|---|---|---|---|---|']
    for data in ('imagefolder', 'noise'):
        runs = [json.loads(p.read_text()) for p in sorted((RESULTS / 'search_quality').glob(f'{data}_s*/quality.json'))]
        if not runs:
            continue
        loss = _spread([r['final']['train_loss'] for r in runs])
        for policy in runs[0]['final']:
            if isinstance(runs[0]['final'][policy], dict):
                stats = [r['final'][policy] for r in runs]
                lines.append(f'| {data} ({len(runs)} seeds, {runs[0]["minutes"]:g} min) | angle: {policy} | '
                             f'{_spread([s["tau"] for s in stats])} | {_spread([s["tau_within_size"] for s in stats])} | '
                             f'{_spread([s["top1_acc"] for s in stats], 2)} | {loss} |')
    rules = json.loads(next((RESULTS / 'search_quality').glob('*/quality.json')).read_text())['rules']
    for name, stats in rules.items():
        lines.append(f'| - | rule: {name} | {stats["tau"]:.3f} | {stats["tau_within_size"]:.3f} | '
                     f'{stats["top1_acc"]:.2f} | - |')
    return '\n'.join(lines)


def _spread(values, digits: int = 3) -> str:
    return f'{statistics.median(values):.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})'


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    speed_benchmarks()
    if not os.environ.get('BENCH_SKIP_QUALITY'):
        quality_benchmarks(float(os.environ.get('BENCH_QUALITY_MINUTES', 15)))
        anatomy_benchmarks()
    summary = []
    for name in ('angle_speed', 'step_time', 'checkpoint_overhead', 'unnas_step_time', 'fractal_speed',
                 'trial_overhead', 'sgas_speed'):
        path = RESULTS / f'{name}.json'
        if path.exists():
            summary.append(f'### {name}\n```json\n{path.read_text().strip()}\n```')
    if (RESULTS / 'pinas_step_time_precision.json').exists():
        text = (RESULTS / 'pinas_step_time_precision.json').read_text().strip()
        summary.append(f'### pinas_step_time\n```json\n{text}\n```')
    if (RESULTS / 'search_quality').exists():
        summary.append('### search quality\n' + quality_table())
    (RESULTS / 'summary.md').write_text('\n\n'.join(summary) + '\n')
    print((RESULTS / 'summary.md').read_text())


if __name__ == '__main__':
    main()
