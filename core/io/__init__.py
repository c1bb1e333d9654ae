"""Save and load compressed models: safetensors weights plus a JSON manifest, nothing pickled.

:func:`save` writes ``model.safetensors`` (every state-dict tensor, sparse-encoded where it pays, see
:mod:`.sparse`) and ``manifest.json`` (versions, recipe, metrics, structural edits, masks, the tensor
index and the SHA-256 of every file, see :mod:`.manifest`). :func:`load` checks all of it, replays the
edits on a copy of a freshly built base model, re-registers the masks and loads the weights strictly::

    torchslim.save(result, "out/model")
    model = torchslim.load("out/model", base_model=build_model())

The package: :mod:`.writer` (:func:`save`) and :mod:`.reader` (:func:`load`), :mod:`.manifest` (the JSON schema),
:mod:`.encoding` and :mod:`.sparse` (tensors to stored parts), :mod:`.structure` (structural edits,
recorded and replayed), :mod:`.layers` (standard layers' constructor arguments), :mod:`.atomic` (atomic
files and directories) and :mod:`.checkpoint` (per-step checkpoints for resumable runs).
"""

from __future__ import annotations

from ..surgery import own_parametrized_classes
from .layers import STANDARD_LAYERS, layer_args
from .reader import default_registry, load
from .writer import save, saved_size_bytes

__all__ = ["STANDARD_LAYERS", "default_registry", "layer_args", "load", "own_parametrized_classes", "save",
           "saved_size_bytes"]
