"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: results do not depend on the core count, and parallel runs do not thrash."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Caches (sensitivities, the per-machine latency table) go to a folder of this test session, not ~/.cache."""
    import os

    previous = os.environ.get("TORCHSLIM_CACHE_DIR")
    os.environ["TORCHSLIM_CACHE_DIR"] = str(tmp_path_factory.mktemp("torchslim-cache"))
    yield
    if previous is None:
        os.environ.pop("TORCHSLIM_CACHE_DIR", None)
    else:
        os.environ["TORCHSLIM_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def engine():
    """An Engine with every installed plugin discovered."""
    import torchslim

    return torchslim.Engine()


@pytest.fixture(scope="module")
def digits():
    """``(x_train, y_train, x_test, y_test)`` of scikit-learn's digits (real data shipped in the package)."""
    from torchslim.demo import digits_tensors

    return digits_tensors()
