"""A trivial NNI trial for GPU-dispatch tests: records the ``CUDA_VISIBLE_DEVICES`` NNI gave it, stays up for
``--hold`` seconds (so concurrent trials overlap in time), and reports a final result.

Writes ``gpu_trial.json`` (devices, start/end wall-clock times, pid, parameters) into ``$NNI_OUTPUT_DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import nni

__all__ = ['main']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--hold', type=float, default=0.0, help='seconds to stay running')
    args = parser.parse_args()
    params = nni.get_next_parameter() or {}
    start = time.time()
    time.sleep(args.hold)
    record = {'cuda_visible_devices': os.environ.get('CUDA_VISIBLE_DEVICES'), 'start': start, 'end': time.time(),
              'pid': os.getpid(), 'parameters': params}
    Path(os.environ.get('NNI_OUTPUT_DIR', '.'), 'gpu_trial.json').write_text(json.dumps(record))
    nni.report_final_result({'default': 1.0, 'cuda_visible_devices': record['cuda_visible_devices']})


if __name__ == '__main__':
    main()
