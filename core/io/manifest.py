"""The ``manifest.json`` of a saved model: its fields, format version, checksum and validation.

The manifest is plain JSON, validated by the pydantic models below on load. Its ``checksum`` is the
SHA-256 of the canonical JSON text (sorted keys, no spaces) of every other field, and ``files``
holds the size and SHA-256 of every other file in the directory, so any change to either is caught
before anything is built. See ``docs/saving.md`` for the field-by-field description.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from ..errors import SaveLoadError
from ..schema import StrictModel

FORMAT = "torchslim"
#: The newest format this torchslim writes and reads; an older reader refuses a newer file.
FORMAT_VERSION = 2  # 2: plain-parameter shapes (``parameters``); version 1 files still load
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"



class TensorEntry(StrictModel):
    """How one state-dict tensor is stored: encoding, dtype, shape and its parts' safetensors names."""

    encoding: Literal["dense", "bitmask", "fill"] = Field(description="see torchslim.sparse")
    dtype: str = Field(description="torch dtype name without the 'torch.' prefix, e.g. 'bfloat16'")
    shape: list[int] = Field(description="the tensor's shape")
    parts: dict[str, str] = Field(description="part name (data, bits, values, signs, fill) -> safetensors key")


class ModuleRecord(StrictModel):
    """A module of a registered kind (say a low-rank factor module), rebuilt from its spec on load."""

    path: str = Field(description="qualified module name in the saved model ('' is the root)")
    kind: str = Field(description="'package.module.ClassName' as torchslim.registry.module_kind_name gives")
    spec: dict[str, Any] | None = Field(default=None, description="the module's torchslim_spec()")
    same_as: str | None = Field(default=None, description="path of the same module object held twice")
    distribution: str | None = Field(default=None, description="distribution that provides the kind (a hint)")


class LayerRecord(StrictModel):
    """A standard layer (conv, linear, norm, embedding) with its constructor arguments."""

    path: str = Field(description="qualified module name in the saved model")
    layer: str = Field(description="'torch.nn.modules.conv.Conv2d' and the like")
    args: dict[str, Any] = Field(default_factory=dict, description="constructor keyword arguments")
    same_as: str | None = Field(default=None, description="path of the same module object held twice")


class ParameterRecord(StrictModel):
    """A plain ``nn.Parameter`` a user module holds itself (``self.pos = nn.Parameter(...)``), with its shape.

    Channel pruning may resize such a parameter along with the layers it meets; no constructor
    argument says so, hence the shape. ``load`` gives the base model's parameter this shape.
    """

    module: str = Field(description="qualified name of the module holding the parameter ('' is the root)")
    name: str = Field(description="the parameter's attribute name")
    shape: list[int] = Field(description="its shape in the saved model")
    same_as: str | None = Field(default=None, description="'module.name' of the same Parameter held twice")


class MaskRecord(StrictModel):
    """A tensor masked by a :class:`torchslim.masks.Mask` parametrization, re-registered on load."""

    module: str = Field(description="qualified name of the module holding the tensor")
    tensor: str = Field(description="the parametrized tensor's name, e.g. 'weight'")
    shares_mask_with: str | None = Field(
        default=None, description="'module.tensor' whose Mask object this one shares (tied weights)")


class FileEntry(StrictModel):
    """Size and SHA-256 of one file of the directory."""

    bytes: int = Field(ge=0, description="file size in bytes")
    sha256: str = Field(description="hex SHA-256 of the file's bytes")


class Manifest(StrictModel):
    """Everything but the weights: versions, recipe, metrics, structural edits, masks, tensor index."""

    format: Literal["torchslim"] = FORMAT
    format_version: int = Field(default=FORMAT_VERSION, description="bumped on incompatible changes")
    torchslim_version: str = Field(description="torchslim version that wrote the directory")
    torch_version: str = Field(description="torch version that wrote the directory")
    model_class: str = Field(description="class of the saved root module (shown in errors)")
    recipe: dict[str, Any] | None = Field(default=None, description="the recipe that produced the model")
    metrics: dict[str, Any] | None = Field(default=None, description="metrics of the run (non-finite -> null)")
    modules: list[ModuleRecord] = Field(default_factory=list, description="registered-kind modules")
    layers: list[LayerRecord] = Field(default_factory=list, description="standard layers and their arguments")
    parameters: list[ParameterRecord] = Field(default_factory=list,
                                              description="plain parameters of user modules and their shapes")
    masks: list[MaskRecord] = Field(default_factory=list, description="masks to re-register")
    tensors: dict[str, TensorEntry] = Field(default_factory=dict, description="state-dict key -> stored form")
    files: dict[str, FileEntry] = Field(default_factory=dict, description="other files of the directory")
    checksum: str = Field(default="", description="SHA-256 of the canonical JSON of all other fields")


def canonical_json(data: Any) -> str:
    """JSON text with sorted keys and no spaces: what the checksum covers."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def checksum_of(data: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``data`` without its ``checksum`` field."""
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def jsonable(value: Any, where: str) -> Any:
    """A JSON-safe copy of ``value``: non-finite floats become null, tensors and numbers plain values."""
    if hasattr(value, "to_dict") and callable(value.to_dict):  # a Recipe: its shorthand form
        return jsonable(value.to_dict(), where)
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump(mode="json"), where)
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # tensors and numpy values
        return jsonable(value.tolist(), where)
    raise SaveLoadError(f"{where}: a {type(value).__name__} cannot be stored in manifest.json; "
                        f"pass JSON-like values (dicts, lists, numbers, strings)")


def render(manifest: Manifest) -> str:
    """The manifest as JSON text with its checksum filled in: one line per record, easy to diff."""
    data = manifest.model_dump(mode="json")
    for key in ("modules", "layers", "parameters", "masks"):  # unset optional references are left out
        data[key] = [{k: v for k, v in record.items() if v is not None or k == "spec"} for record in data[key]]
    data["checksum"] = checksum_of(data)
    lines = []
    for key, value in data.items():
        name = json.dumps(key)
        if key in ("recipe", "metrics") and value:
            lines.append(f" {name}: " + json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n "))
        elif isinstance(value, list) and value:
            lines.append(f" {name}: [\n" + ",\n".join(f"  {_line(v)}" for v in value) + "\n ]")
        elif isinstance(value, dict) and value and key in ("tensors", "files"):
            lines.append(f" {name}: {{\n" + ",\n".join(f"  {json.dumps(k)}: {_line(v)}" for k, v in value.items())
                         + "\n }")
        else:
            lines.append(f" {name}: {_line(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def read(directory: Path) -> Manifest:
    """Read and verify ``directory/manifest.json``: format, version, checksum, then every field.

    Raises :class:`SaveLoadError` naming the file and what is wrong.
    """
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise SaveLoadError(f"{directory} is not a directory saved by torchslim.save (it does not exist)")
    if not path.is_file():
        raise SaveLoadError(f"{path} is missing; {directory} is not a directory saved by torchslim.save")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SaveLoadError(f"{path} is not valid JSON (truncated or altered?): {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SaveLoadError(f"{path} is not a torchslim manifest (no \"format\": \"{FORMAT}\")")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SaveLoadError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise SaveLoadError(
            f"{path} was written in format version {version} by torchslim "
            f"{data.get('torchslim_version', '?')}; this torchslim reads format versions up to "
            f"{FORMAT_VERSION}. Upgrade torchslim (pip install -U torchslim) to load it."
        )
    if version < 1:
        raise SaveLoadError(f"{path}: format_version {version} is not a valid version (expected 1..{FORMAT_VERSION})")
    stored = data.get("checksum")
    if stored != checksum_of(data):
        raise SaveLoadError(f"{path} was altered or corrupted: its checksum does not match its contents")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise SaveLoadError(f"{path} does not hold a valid manifest: {problems}") from None


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Check that every file the manifest lists exists with the recorded size and SHA-256."""
    for name, entry in manifest.files.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise SaveLoadError(f"{directory / MANIFEST_FILE} lists an invalid file name {name!r}")
        path = directory / name
        if not path.is_file():
            raise SaveLoadError(f"{path} is missing (listed in {MANIFEST_FILE})")
        size = path.stat().st_size
        if size != entry.bytes:
            what = "truncated" if size < entry.bytes else "longer than written"
            raise SaveLoadError(f"{path} is {what}: {size} bytes, the manifest records {entry.bytes}")
        if file_sha256(path) != entry.sha256:
            raise SaveLoadError(f"{path} was altered or corrupted: its SHA-256 does not match the manifest")
