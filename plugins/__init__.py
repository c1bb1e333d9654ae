"""torchslim's built-in plugins, declared as entry points in group ``torchslim`` like any third party's."""

import torchslim as _torchslim

if not hasattr(_torchslim, "hookimpl"):  # pragma: no cover - only when the package is shadowed
    _where = ", ".join(getattr(_torchslim, "__path__", None) or [str(getattr(_torchslim, "__file__", "?"))])
    raise ImportError(
        f"'import torchslim' found {_where}, which is not the installed torchslim package: a folder named "
        f"'torchslim' (most likely your clone of the repository) is on sys.path (the current directory or "
        f"PYTHONPATH) and shadows it. Run from another directory, or remove that folder from PYTHONPATH."
    )
