"""The callable a ``deploy`` step returns: a model compiled for a runtime, measured as it ships."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..errors import SaveLoadError

#: The module counts a runtime artifact carries from the model it was built from (its weights are
#: inside the artifact, where the parameter and MAC counters cannot see them).
COUNTS = ("params", "nonzeros", "macs")


class RuntimeModule(nn.Module):
    """An ``nn.Module`` whose ``forward`` runs an artifact of one runtime (ONNX Runtime, TorchScript, ...).

    A runtime plugin subclasses it, implements :meth:`run` (flat input tensors in, flat output tensors
    out), :meth:`load_artifact` (build the session from the artifact files) and registers the subclass
    through ``register_module_kinds``. The base class keeps the model's output structure (tuples,
    dicts, ...) so the module answers exactly like the model it replaced, and carries the files:
    :func:`torchslim.save` writes :attr:`files` beside the manifest and :func:`torchslim.load` gives the
    module back without a base model. It holds no parameters: evaluators time, size and score the
    artifact itself; ``params``, ``nonzeros`` and ``macs`` are those of the model it was built from.

    >>> result = engine.run(model, {"steps": [{"deploy": {"method": "onnxruntime"}}]}, ...)  # doctest: +SKIP
    >>> result.model(x)            # runs in ONNX Runtime                                  # doctest: +SKIP
    """

    #: The deploy method that builds this kind (shown in tables and errors).
    runtime: ClassVar[str] = "runtime"

    def __init__(self, spec: dict[str, Any], files: dict[str, bytes]) -> None:
        super().__init__()
        missing = [key for key in ("outputs", "inputs") if key not in spec]
        if missing:
            raise SaveLoadError(f"{type(self).__name__}: the spec lacks {', '.join(missing)}")
        self.spec = dict(spec)
        self.files = dict(files)
        self.torchslim_counts = {key: int(value) for key, value in spec.get("counts", {}).items()}
        self._outputs = pytree.treespec_loads(spec["outputs"])
        self.load_artifact()

    # ------------------------------------------------------------------ what a runtime implements
    def load_artifact(self) -> None:
        """Build the runtime session from :attr:`files` (called once, on construction and on load)."""
        raise NotImplementedError

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the artifact on the flat input tensors; return the flat output tensors."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the module
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"{type(self).__name__} takes the model's positional inputs only, got keywords "
                            f"{sorted(kwargs)}; deploy a model whose forward takes positional tensors")
        flat = [a for a in pytree.tree_leaves(args) if isinstance(a, torch.Tensor)]
        if len(flat) != self.spec["inputs"]:
            raise TypeError(f"{type(self).__name__} was built for {self.spec['inputs']} input tensor(s), "
                            f"got {len(flat)}")
        with torch.no_grad():
            outputs = self.run([t.detach().cpu().contiguous() for t in flat])
        return pytree.tree_unflatten(outputs, self._outputs)

    def extra_repr(self) -> str:
        size = sum(len(data) for data in self.files.values())
        return f"runtime={self.runtime!r}, precision={self.spec.get('precision')!r}, artifact_bytes={size}"

    # ------------------------------------------------------------------ save and load
    def torchslim_spec(self) -> dict[str, Any]:
        """The spec (runtime settings, input count, output structure, counts); the files travel apart."""
        return dict(self.spec, files=sorted(self.files))

    @classmethod
    def from_torchslim_spec(cls, spec: dict[str, Any]) -> "RuntimeModule":
        raise SaveLoadError(f"{cls.__name__} is a runtime artifact: load it with torchslim.load(directory), "
                            f"which reads its files")

    def torchslim_artifact(self) -> dict[str, bytes]:
        """The artifact files, by name, that :func:`torchslim.save` writes beside the manifest."""
        return dict(self.files)

    @classmethod
    def from_torchslim_artifact(cls, spec: dict[str, Any], directory: Path) -> "RuntimeModule":
        """Rebuild the module from its spec and the files in ``directory`` (checked against the manifest)."""
        names = spec.get("files", [])
        files = {name: (directory / name).read_bytes() for name in names}
        return cls({key: value for key, value in spec.items() if key != "files"}, files)


def output_spec(outputs: Any) -> str:
    """The JSON form of ``outputs``' structure (tuples, lists, dicts of tensors), for :class:`RuntimeModule`."""
    _, spec = pytree.tree_flatten(outputs)
    return pytree.treespec_dumps(spec)


def is_artifact(model: nn.Module) -> bool:
    """True when ``model`` is a runtime artifact (a :class:`RuntimeModule` or any kind that carries files)."""
    return callable(getattr(type(model), "from_torchslim_artifact", None)) and callable(
        getattr(model, "torchslim_artifact", None))
