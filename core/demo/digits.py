"""Real data that ships in packages: scikit-learn's 8x8 digits as DataLoaders."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset


def digits_tensors(test_size: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)`` of the digits set, stratified, scaled to [0, 1].

    Images are ``N x 1 x 8 x 8`` float32, labels int64. Needs scikit-learn (the ``demo`` extra).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data needs scikit-learn: pip install 'torchslim[demo]'") from exc
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_size, stratify=y.numpy(), random_state=seed
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def digits_loaders(batch_size: int = 64, seed: int = 0, test_size: float = 0.25) -> tuple[DataLoader, DataLoader]:
    """Train and test DataLoaders of the digits set; the train loader shuffles with a seeded generator."""
    x_train, y_train, x_test, y_test = digits_tensors(test_size, seed)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=gen)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=256)
    return train, test
