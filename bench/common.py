"""Pieces every benchmark shares: a Lightning step clock and printing/writing a JSON result."""
from __future__ import annotations

import json
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch

__all__ = ['StepClock', 'emit_json', 'load_saved_supernet', 'run_quality_bench']


class StepClock(pl.Callback):
    """Time between consecutive batch starts: everything one training step costs (data, sampling, updates)."""

    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def step_seconds(self, skip: int = 2) -> float:
        """Median step time, leaving out the first ``skip`` (warm-up) steps."""
        gaps = [b - a for a, b in zip(self.starts, self.starts[1:])][skip:]
        return statistics.median(gaps)


def emit_json(result: Any, out: str | Path | None) -> None:
    """Print a benchmark result as JSON and, if ``out`` is given, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + '\n')


def run_quality_bench(name: str, compute: Callable[[], Any], out: str | Path | None,
                      table: Callable[[Any], str]) -> None:
    """A quality benchmark's main body: INFO logging, one torch thread, a ``ValueError`` ends the program with
    ``name: message``, then the JSON result (printed and written to ``out``) and its table."""
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    warnings.filterwarnings('ignore')
    torch.set_num_threads(1)
    try:
        result = compute()
    except ValueError as err:
        raise SystemExit(f'{name}: {err}') from err
    emit_json(result, out)
    print(table(result))


def load_saved_supernet(run: str | Path) -> tuple[dict, dict]:
    """``(initial, final)`` parameters an RLNAS search saved (``checkpoints/supernet_final.pt``), with a clear error
    for a folder that is not a finished run."""
    path = Path(run) / 'checkpoints' / 'supernet_final.pt'
    if not path.is_file():
        raise ValueError(f'{run} has no checkpoints/supernet_final.pt; pass the output folder of a finished '
                         'bench.search_quality (or nni-labelfree search --strategy rlnas) run.')
    saved = torch.load(path, map_location='cpu', weights_only=False)
    if not isinstance(saved, dict) or saved.get('initial') is None:
        raise ValueError(f'{path} holds no initial weights (not an RLNAS search); the angle needs them.')
    return saved['initial'], saved['final']
