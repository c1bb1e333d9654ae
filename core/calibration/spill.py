"""Where :class:`~torchslim.calibration.BlockStream` keeps each calibration batch's hidden states.

Sequential calibration holds one block's input activations for every calibration batch (``tokens x
width`` floats), so its memory grows with the calibration tokens. :class:`HiddenStore` keeps them in
memory up to a limit and, beyond it, in files of a private temporary folder (``torch.save`` of our own
tensors, read back with ``weights_only=True``; the folder goes when the store does), so 4x the tokens
costs disk and a little time, not 4x the memory. The limit is ``$TORCHSLIM_CALIBRATION_MB`` megabytes
(default 1024; 0 writes every batch to disk).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

#: Megabytes of hidden states kept in memory before the rest go to disk.
DEFAULT_LIMIT_MB = 1024.0


def memory_limit_bytes() -> float:
    """``$TORCHSLIM_CALIBRATION_MB`` in bytes (default :data:`DEFAULT_LIMIT_MB`)."""
    raw = os.environ.get("TORCHSLIM_CALIBRATION_MB", "").strip()
    try:
        megabytes = float(raw) if raw else DEFAULT_LIMIT_MB
    except ValueError:
        raise ValueError(f"TORCHSLIM_CALIBRATION_MB={raw!r} is not a number; set it to the megabytes of "
                         f"calibration activations to keep in memory (e.g. 1024), or unset it") from None
    return max(megabytes, 0.0) * 2 ** 20


class HiddenStore:
    """One tensor per calibration batch: in memory while they fit under ``limit`` bytes, else on disk.

    A batch stays where it was first put: replacing an in-memory tensor by one of the same size keeps
    the total, so memory never passes the limit (plus the one batch being read).
    """

    def __init__(self, limit: float | None = None) -> None:
        self.limit = memory_limit_bytes() if limit is None else limit
        self.items: list[torch.Tensor | tuple[Path, torch.device] | None] = []
        self.in_memory = 0
        self._folder: tempfile.TemporaryDirectory | None = None

    def __len__(self) -> int:
        return len(self.items)

    def append(self, tensor: torch.Tensor) -> None:
        self.items.append(None)
        self.put(len(self.items) - 1, tensor)

    def put(self, index: int, tensor: torch.Tensor) -> None:
        """Store ``tensor`` as batch ``index``'s hidden states."""
        tensor = tensor.detach()
        size = tensor.numel() * tensor.element_size()
        old = self.items[index]
        if isinstance(old, torch.Tensor):
            self.in_memory += size - old.numel() * old.element_size()
            self.items[index] = tensor
        elif old is None and self.in_memory + size <= self.limit:
            self.in_memory += size
            self.items[index] = tensor
        else:
            path = self.folder / f"{index}.pt"
            torch.save(tensor.cpu(), path)
            self.items[index] = (path, tensor.device)

    def get(self, index: int) -> torch.Tensor:
        """Batch ``index``'s hidden states (read back from disk when they live there)."""
        item = self.items[index]
        if isinstance(item, torch.Tensor):
            return item
        if item is None:
            raise IndexError(f"batch {index} has no hidden states stored")
        path, device = item
        return torch.load(path, weights_only=True).to(device)

    @property
    def on_disk(self) -> int:
        """How many batches live on disk."""
        return sum(isinstance(item, tuple) for item in self.items)

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="torchslim-calibration-")
        return Path(self._folder.name)
