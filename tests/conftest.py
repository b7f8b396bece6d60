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


# NNI's experiment logger keeps writing to the stream pytest captured for an earlier test; the handler then
# prints "Logging error ... I/O operation on closed file" tracebacks. They are noise, not failures.
import logging  # noqa: E402

logging.raiseExceptions = False
