import os

# Before torch is imported anywhere: idle OpenMP threads sleep instead of spinning,
# which on a 2-core machine keeps a busy neighbour from slowing each test 10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny tensors: a second intra-op thread only adds overhead."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
