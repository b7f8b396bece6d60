"""GPU dispatch for NNI 3.0's local training service: one trial per GPU that actually gets scheduled.

How NNI 3.0 places a local trial (read from ``nni_node/training_service/local_v3/local.js`` and
``nni_node/common/trial_keeper/task_scheduler/scheduler.js``):

- the trial keeper learns the GPU inventory from ``python -m nni.tools.nni_manager_scripts.collect_gpu_info``
  (NVML through ``pynvml``; ``nvidia-smi`` is not used), run with the manager's Python and environment;
- each trial requests ``trialGpuNumber / maxTrialNumberPerGpu`` GPUs;
- a request ``>= number of GPUs on the machine`` is refused *every time* (the off-by-one: ``trialGpuNumber: 1`` on
  a 1-GPU machine never starts, and the manager retries once a second forever, showing no trial at all); every
  retry also starts the Python GPU collector again (its 10-second cache never hits: the collector's output carries
  no ``timestamp``), and on a busy machine these pile up (hundreds of processes were seen here with a fake GPU);
- a request below 1 goes to the least-loaded GPU (fractional sharing); a request of ``n >= 1`` takes ``round(n)``
  whole idle GPUs, so ``trialGpuNumber: 2`` with ``maxTrialNumberPerGpu: 2`` silently gives one GPU;
- ``useActiveGpu: false`` drops every GPU with any running process (a desktop, another user's job, or this
  experiment's last trial while NNI's 10-second GPU cache still lists it); when none is left the trial waits
  forever (and the fractional branch even throws on the empty list).

:func:`plan_gpu_dispatch` turns a config into one that schedules, under the policy *one trial per
``trialGpuNumber`` GPUs*: ``trialConcurrency`` = usable GPUs // ``trialGpuNumber``; ``maxTrialNumberPerGpu`` = 2
on a 1-GPU machine (the fractional request 0.5 is the only one NNI 3.0 schedules there; with that concurrency no
two trials share the GPU) and 1 otherwise (whole-GPU requests, exclusive by construction). Configurations that
would hang are refused with the fix before anything starts.

What was verified, and how (``tests/test_gpu_dispatch.py``): every plan, fed to NNI's own ``scheduler.js`` with a
mocked inventory (1, 2, 4, 8 GPUs, ``gpuIndices``, multi-GPU trials), schedules every trial with no GPU shared by
concurrent trials, and what is refused is what that scheduler never schedules (returns null or throws); with a fake
NVML (``tests/fake_gpu/pynvml.py`` first on ``PYTHONPATH``) NNI's real manager and trial keeper run every trial of
``trialGpuNumber: 1`` on 1 fake GPU after the rewrite, and 4 trials at once on 4 fake GPUs, each with its own
``CUDA_VISIBLE_DEVICES``. Not verified: real GPUs (none on this project's machines), i.e. that CUDA in the trial
honours the variable, NVML's reports of real processes (``useActiveGpu``), and the remote/kubeflow schedulers.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field

__all__ = ['GpuInventory', 'GpuDispatch', 'detect_gpus', 'plan_gpu_dispatch', 'apply_gpu_dispatch']

_logger = logging.getLogger(__name__)

_COLLECTOR = 'nni.tools.nni_manager_scripts.collect_gpu_info'


@dataclass(frozen=True)
class GpuInventory:
    """What NNI's trial keeper sees: GPU count, indices with a running process, and why detection failed if so."""

    count: int
    active: tuple[int, ...] = ()
    error: str = ''


@dataclass
class GpuDispatch:
    """The scheduling keys a config should run with, and a note per key that was changed."""

    trial_gpu_number: int
    max_trial_number_per_gpu: int
    trial_concurrency: int
    notes: list[str] = field(default_factory=list)


def detect_gpus(timeout: float = 120.0) -> GpuInventory:
    """Run NNI's own GPU collector the way the NNI manager does (this interpreter, this environment).

    Returns
    -------
    GpuInventory
        ``count=0`` with ``error`` set when NVML is unavailable (no driver) or the collector failed.
    """
    try:
        done = subprocess.run([sys.executable, '-m', _COLLECTOR], capture_output=True, text=True, timeout=timeout)
        info = json.loads(done.stdout)
    except (subprocess.SubprocessError, OSError, ValueError) as err:
        return GpuInventory(0, error=f'the collector {_COLLECTOR} did not answer: {err}')
    if not info.get('success'):
        return GpuInventory(0, error='; '.join(info.get('failures', [])) or 'NVML unavailable')
    active = sorted({proc['gpuIndex'] for proc in info.get('processes', [])})
    return GpuInventory(int(info.get('gpuNumber', 0)), tuple(active))


def _usable_indices(config, inventory: GpuInventory) -> list[int]:
    from nni.experiment.config.utils import canonical_gpu_indices
    indices = canonical_gpu_indices(config.training_service.gpu_indices)
    if indices is None:
        return list(range(inventory.count))
    missing = [i for i in indices if not 0 <= i < inventory.count]
    if missing:
        raise ValueError(f'trainingService.gpuIndices {indices} names GPU {missing} but NNI sees GPUs '
                         f'0..{inventory.count - 1}; list existing indices or drop gpuIndices.')
    return indices


def _check_gpus_exist(gpus: int, inventory: GpuInventory) -> None:
    if inventory.count == 0:
        raise ValueError(f'trialGpuNumber is {gpus} but NNI finds no GPU ({inventory.error or "NVML lists none"}). '
                         f'Set trialGpuNumber: 0 to run on CPU, or install the NVIDIA driver so that '
                         f'`python -m {_COLLECTOR}` lists your GPUs.')


def _check_active_gpu_policy(config, gpus: int) -> None:
    if config.training_service.use_active_gpu is not True:
        raise ValueError(f'trialGpuNumber is {gpus} with trainingService.useActiveGpu not true: NNI 3.0 then skips '
                         f'every GPU with a running process (a desktop, another job, or the previous trial still in '
                         f"NNI's 10-s GPU cache) and a trial waits forever when none is left. Set useActiveGpu: true "
                         f'(trialConcurrency = number of GPUs keeps this experiment\'s trials on separate GPUs).')


def _check_multi_gpu_request(gpus: int, per_gpu: int, usable: int, total: int) -> None:
    if gpus > usable:
        raise ValueError(f'trialGpuNumber is {gpus} but only {usable} GPU(s) are usable (NNI sees {total}); '
                         f'lower trialGpuNumber to at most {usable} or list more GPUs in gpuIndices.')
    if gpus >= 2 and per_gpu > 1:
        raise ValueError(f'trialGpuNumber {gpus} with maxTrialNumberPerGpu {per_gpu}: NNI 3.0 would give each trial '
                         f'round({gpus}/{per_gpu}) GPUs, not {gpus}. Set maxTrialNumberPerGpu: 1.')
    if gpus >= 2 and gpus >= total:
        raise ValueError(f'trialGpuNumber {gpus} on a machine with {total} GPUs: NNI 3.0 never schedules a request '
                         f'for as many GPUs as the machine has (its local scheduler refuses gpuNumber >= GPU count, '
                         f'and the trial waits forever). Use trialGpuNumber <= {total - 1}, or remove trialGpuNumber '
                         f'and set trialConcurrency: 1 so the trial sees every GPU (NNI then leaves '
                         f'CUDA_VISIBLE_DEVICES alone).')


def plan_gpu_dispatch(config, inventory: GpuInventory) -> GpuDispatch | None:
    """The scheduling keys under which every GPU trial of a local ``config`` is scheduled, one per GPU.

    Parameters
    ----------
    config
        An ``nni.experiment.config.ExperimentConfig``.
    inventory
        The GPUs NNI will see (:func:`detect_gpus`).

    Returns
    -------
    GpuDispatch or None
        None when nothing applies (no GPU requested, or not the local training service).

    Raises
    ------
    ValueError
        For a configuration NNI 3.0 would never schedule (the message says how to fix it).
    """
    gpus = config.trial_gpu_number or 0
    if gpus == 0 or config.training_service.platform != 'local':
        return None
    _check_gpus_exist(gpus, inventory)
    usable = _usable_indices(config, inventory)
    _check_active_gpu_policy(config, gpus)
    per_gpu = config.training_service.max_trial_number_per_gpu
    _check_multi_gpu_request(gpus, per_gpu, len(usable), inventory.count)
    plan = GpuDispatch(gpus, 2 if inventory.count == 1 else 1, max(1, len(usable) // gpus))
    if plan.max_trial_number_per_gpu != per_gpu:
        why = ('so each trial requests 0.5 GPU, the only request NNI 3.0 schedules on a 1-GPU machine'
               if inventory.count == 1 else 'whole-GPU requests keep every trial on its own GPUs')
        plan.notes.append(f'maxTrialNumberPerGpu {per_gpu} -> {plan.max_trial_number_per_gpu} ({why})')
    if plan.trial_concurrency != config.trial_concurrency:
        plan.notes.append(f'trialConcurrency {config.trial_concurrency} -> {plan.trial_concurrency} '
                          f'(one trial per {gpus} of the {len(usable)} usable GPU(s))')
    return plan


def apply_gpu_dispatch(config, inventory: GpuInventory | None = None) -> list[str]:
    """Check ``config`` and rewrite its scheduling keys in place (see module docstring); returns the notes.

    The GPU inventory is detected only when the config asks for GPUs on the local training service.
    """
    if not config.trial_gpu_number or config.training_service.platform != 'local':
        return []
    plan = plan_gpu_dispatch(config, inventory if inventory is not None else detect_gpus())
    config.training_service.max_trial_number_per_gpu = plan.max_trial_number_per_gpu
    config.trial_concurrency = plan.trial_concurrency
    for note in plan.notes:
        _logger.info('GPU dispatch: %s', note)
    return plan.notes
