"""A trivial NNI trial for GPU-dispatch tests: records the ``CUDA_VISIBLE_DEVICES`` NNI gave it, stays up for
``--hold`` seconds (so concurrent trials overlap in time), and reports a final result.

Writes ``gpu_trial.json`` (devices, start/end wall-clock times, pid, parameters) into ``$NNI_OUTPUT_DIR``.

To start in milliseconds rather than the ~1.5 s ``import nni`` costs (scipy), it speaks NNI 3.0's HTTP trial
command channel (``$NNI_TRIAL_COMMAND_CHANNEL``; ``nni/runtime/command_channel/http.py`` and
``trial_command_channel/v3.py``) with the standard library: the same two messages ``nni.get_next_parameter()``
and ``nni.report_final_result()`` send.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ['main']


def _put(url: str, command: dict) -> None:
    request = urllib.request.Request(url, data=json.dumps(command).encode(), method='PUT',
                                     headers={'Content-Type': 'application/json'})
    urllib.request.urlopen(request, timeout=60).read()


def _receive(url: str) -> dict:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            if err.code != 408:  # 408: nothing yet, poll again
                raise


def next_parameter(url: str) -> dict:
    """``nni.get_next_parameter()``: the parameter record (``parameter_id``, ``parameters``, ...)."""
    _put(url, {'type': 'request_parameter'})
    reply = _receive(url)
    return json.loads(reply['parameter'])


def report_final(url: str, record: dict, value: dict) -> None:
    """``nni.report_final_result(value)``."""
    metric = {'parameter_id': record.get('parameter_id'), 'trial_job_id': os.environ.get('NNI_TRIAL_JOB_ID'),
              'type': 'FINAL', 'sequence': 0, 'value': json.dumps(value)}
    _put(url, {'type': 'metric', 'metric': json.dumps(metric)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--hold', type=float, default=0.0, help='seconds to stay running')
    args = parser.parse_args()
    url = os.environ.get('NNI_TRIAL_COMMAND_CHANNEL')
    parameter = next_parameter(url) if url else {}
    start = time.time()
    time.sleep(args.hold)
    record = {'cuda_visible_devices': os.environ.get('CUDA_VISIBLE_DEVICES'), 'start': start, 'end': time.time(),
              'pid': os.getpid(), 'parameters': parameter.get('parameters', {})}
    Path(os.environ.get('NNI_OUTPUT_DIR', '.'), 'gpu_trial.json').write_text(json.dumps(record))
    if url:
        report_final(url, parameter, {'default': 1.0, 'cuda_visible_devices': record['cuda_visible_devices']})


if __name__ == '__main__':
    main()
