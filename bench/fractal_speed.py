"""Fractal generation speed (UnrealNAS's RLGD data): category search time and rendered images per second.

- category search at FractalDB's settings (512 px canvas, 100k chaos-game points, filling rate >= 0.2): seconds
  per accepted category and per candidate, acceptance rate, extrapolated to FracDB-100;
- rendering at 32x32 (and 16x16): images per second, best and median of ``--repeats``, for ``--images`` images
  (25k by default, the paper's RLGD training half), and one image at a time (``batch_size=1``) for comparison;
- ``FractalImages`` end to end (render + tensor) for the same number of images.

    python -m bench.fractal_speed --categories 10 --images 25000 --repeats 3 --out bench/results/fractal_speed.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from nni_labelfree.data.fractal import FractalImages, RenderSettings, render_fractals, search_categories

from bench.common import emit_json


def _timed(function, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each repeat (CPU time is what a loaded, shared machine distorts least)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def _search(num_categories: int, seed: int) -> tuple[dict, list]:
    start_cpu = time.process_time()
    result = search_categories(num_categories, seed=seed)
    cpu = time.process_time() - start_cpu
    tried = len(result.accepted) + len(result.rejected)
    return {'categories': num_categories, 'candidates': tried, 'acceptance_rate': num_categories / tried,
            'seconds': result.seconds, 'cpu_seconds': cpu, 'seconds_per_category': result.seconds / num_categories,
            'ms_per_candidate': 1e3 * result.seconds / tried,
            'fracdb100_seconds_extrapolated': 100 * result.seconds / num_categories,
            'accepted_filling_rates': [round(c.filling_rate, 4) for c in result.accepted]}, result.accepted


def _render_rate(categories: list, num_images: int, image_size: int, repeats: int, batch_size: int = 256) -> dict:
    ids = np.arange(num_images)
    settings = RenderSettings(batch_size=batch_size)
    wall, cpu = _timed(lambda: render_fractals(categories, ids % len(categories), ids // len(categories),
                                               image_size, 0, settings), repeats)
    return {'images': num_images, 'image_size': image_size, 'batch_size': batch_size,
            'images_per_second_best': num_images / min(wall),
            'images_per_second_median': num_images / statistics.median(wall),
            'images_per_cpu_second_best': num_images / min(cpu), 'wall_seconds': wall, 'cpu_seconds': cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--categories', type=int, default=10)
    parser.add_argument('--images', type=int, default=25_000)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    search, categories = _search(args.categories, args.seed)
    end_to_end, end_to_end_cpu = _timed(
        lambda: FractalImages(num_images=args.images, categories=categories, seed=args.seed), args.repeats)
    result = {'threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
              'load_average_at_start': load_at_start,
              'category_search': search,
              'render_32px': _render_rate(categories, args.images, 32, args.repeats),
              'render_16px': _render_rate(categories, args.images, 16, args.repeats),
              'render_32px_one_at_a_time': _render_rate(categories, 500, 32, args.repeats, batch_size=1),
              'fractal_images_32px_seconds_best': min(end_to_end),
              'fractal_images_32px_cpu_seconds_best': min(end_to_end_cpu),
              'load_average_at_end': os.getloadavg()[0]}
    result['vectorisation_speedup_32px'] = (result['render_32px']['images_per_second_best']
                                            / result['render_32px_one_at_a_time']['images_per_second_best'])
    emit_json(result, args.out)


if __name__ == '__main__':
    main()
