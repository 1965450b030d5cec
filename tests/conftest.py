"""Suite-wide settings: one intra-op thread.

The suite runs tiny models, where a second thread only adds synchronisation; on a shared 2-core machine
it can make a test 30x slower. The environment variable carries the setting into subprocesses
(CLI, torchrun / gloo ranks, SIGKILL-and-resume runs).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
