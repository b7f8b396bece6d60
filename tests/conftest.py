"""Shared fixtures: the test-data folder and tiny spaces."""
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings('ignore', message=r'.*is found to be not a nn\.Module')

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip saying why the test cannot run."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'test data folder {SHARED_DATA} is absent (it ships beside the repository)')
    return SHARED_DATA


@pytest.fixture(scope='module')
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures('one_torch_thread')``): on a loaded
    2-core machine, two threads make tiny steps many times slower."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# NNI's experiment logger keeps writing to the stream pytest captured for an earlier test; the handler then
# prints "Logging error ... I/O operation on closed file" tracebacks. They are noise, not failures.
import logging  # noqa: E402

logging.raiseExceptions = False
