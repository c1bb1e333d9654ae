"""Exceptions raised by torchslim; every one is a :class:`TorchslimError`."""

from __future__ import annotations


class TorchslimError(Exception):
    """Base class of every error torchslim raises on purpose."""


class RecipeError(TorchslimError, ValueError):
    """A recipe (or a step's options) is invalid; raised before any work starts."""


class PluginError(TorchslimError):
    """A plugin could not be loaded, is registered twice, or is not installed."""


class StepError(TorchslimError):
    """A plugin failed while running a step; chained to the plugin's own exception."""


class DataError(TorchslimError, ValueError):
    """Training or evaluation data does not have the shape, dtype or labels expected."""


class ModelError(TorchslimError, ValueError):
    """The model cannot be handled as asked (non-finite weights, no matching layers, ...)."""


class SaveLoadError(TorchslimError):
    """A saved model directory is missing, corrupt, or does not fit the base model."""


class ExportError(TorchslimError):
    """Exporting a model (ONNX, TorchScript) failed or its outputs do not match PyTorch's."""
