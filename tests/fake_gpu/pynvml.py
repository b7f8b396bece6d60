"""A fake NVML (``pynvml``) for testing NNI's GPU scheduling on a machine without GPUs.

NNI 3.0's local training service learns the GPU inventory by running
``python -m nni.tools.nni_manager_scripts.collect_gpu_info``, which does ``from pynvml import *`` (it never calls
``nvidia-smi``). With this folder first on ``PYTHONPATH`` in the environment the NNI manager starts from, that
collector imports this module instead of the real binding and sees:

- ``NNI_LABELFREE_FAKE_GPUS``: the number of GPUs (default 1; ``0`` makes ``nvmlInit`` fail like a machine without
  a driver);
- ``NNI_LABELFREE_FAKE_GPU_PROCESSES``: optional ``index:kind`` pairs, comma-separated (``0:graphics,2:compute``),
  processes reported running on those GPUs (what makes NNI treat a GPU as *active*).

Only the calls ``collect_gpu_info`` makes are implemented; trials see no GPU at all (CUDA is not faked), they only
receive the ``CUDA_VISIBLE_DEVICES`` NNI's scheduler chose.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

__all__ = ['NVMLError', 'nvmlInit', 'nvmlShutdown', 'nvmlDeviceGetCount', 'nvmlDeviceGetHandleByIndex',
           'nvmlSystemGetDriverVersion', 'nvmlSystemGetCudaDriverVersion_v2', 'nvmlDeviceGetName',
           'nvmlDeviceGetNumGpuCores', 'nvmlDeviceGetMemoryInfo', 'nvmlDeviceGetUtilizationRates',
           'nvmlDeviceGetComputeRunningProcesses_v3', 'nvmlDeviceGetGraphicsRunningProcesses_v3',
           'nvmlSystemGetProcessName']

_MEMORY = 16 * 1024 ** 3
_FAKE_PID = 4242


class NVMLError(Exception):
    """Raised like the real binding's error."""


def _gpu_count() -> int:
    return int(os.environ.get('NNI_LABELFREE_FAKE_GPUS', '1'))


def _processes(index: int, kind: str) -> list:
    spec = os.environ.get('NNI_LABELFREE_FAKE_GPU_PROCESSES', '')
    pairs = [item.split(':') for item in spec.split(',') if item.strip()]
    return [SimpleNamespace(pid=_FAKE_PID + index, usedGpuMemory=1024 ** 3)
            for gpu, proc_kind in pairs if int(gpu) == index and proc_kind == kind]


def nvmlInit() -> None:
    if _gpu_count() <= 0:
        raise NVMLError('NVML Shared Library Not Found (fake: NNI_LABELFREE_FAKE_GPUS=0)')


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return _gpu_count()


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < _gpu_count():
        raise NVMLError(f'Invalid Argument: GPU {index}')
    return index


def nvmlSystemGetDriverVersion() -> str:
    return '000.00-fake'


def nvmlSystemGetCudaDriverVersion_v2() -> int:
    return 12000


def nvmlDeviceGetName(handle: int) -> str:
    return f'Fake GPU {handle}'


def nvmlDeviceGetNumGpuCores(handle: int) -> int:
    return 1024


def nvmlDeviceGetMemoryInfo(handle: int):
    return SimpleNamespace(total=_MEMORY, free=_MEMORY, used=0)


def nvmlDeviceGetUtilizationRates(handle: int):
    return SimpleNamespace(gpu=0, memory=0)


def nvmlDeviceGetComputeRunningProcesses_v3(handle: int) -> list:
    return _processes(handle, 'compute')


def nvmlDeviceGetGraphicsRunningProcesses_v3(handle: int) -> list:
    return _processes(handle, 'graphics')


def nvmlSystemGetProcessName(pid: int) -> str:
    return 'fake-process'
