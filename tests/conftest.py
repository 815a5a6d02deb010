"""Test-wide set-up.

TRITON_INTERPRET must be set before triton is first imported so the Triton kernels run on the
CPU interpreter here; on a CUDA machine we leave it unset so the compiled kernels are tested.
"""

import os
from pathlib import Path

import pytest

# no NVIDIA device node: run the Triton kernels on the interpreter
if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device: run through the device tool")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data set beside the checkout (../shared/data); skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (clone with shared/ beside it)")
    return SHARED_DATA
