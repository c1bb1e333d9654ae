"""The installed version of torchslim (one home: the package, save manifests and the CLI read it)."""

__version__ = "0.2.0"
