"""Suite-wide settings: one intra-op thread, OpenMP threads that sleep rather than spin.

The suite runs tiny models, where a second thread only adds synchronisation; on a shared 2-core machine
spinning threads can make a test 30x slower. The environment variables carry the settings into
subprocesses (CLI, torchrun / gloo ranks, SIGKILL-and-resume runs); they must be set before torch loads.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
