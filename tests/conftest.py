"Shared pytest fixtures: real sample images when ../shared has them, and a small simulated demo set."
import os
from pathlib import Path
import pytest

os.environ.setdefault('MPLBACKEND', 'Agg')

GENIMAGE = Path(__file__).resolve().parents[2]/'shared'/'data'/'genimage-sample'

@pytest.fixture(scope='session')
def genimage_dir():
    "The GenImage sample beside the checkout (../shared/data/genimage-sample); skips when absent."
    if not (GENIMAGE/'natural').is_dir(): pytest.skip(f'GenImage sample not found at {GENIMAGE}')
    return GENIMAGE


@pytest.fixture
def one_torch_thread():
    "One torch thread: on a small shared CI box, 2 OpenMP threads competing with other jobs run ~10x slower."
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
