"""fedsim: a fast simulator for federated and decentralized learning.

Heavy modules (torch, flwr) are imported lazily by the pieces that need them, so
``import fedsim`` and ``fedsim --help`` stay fast.
"""

from __future__ import annotations

from pathlib import Path


def _version() -> str:
    """The installed distribution's version (wheel or editable install); in a source tree
    that was never installed, the version in the checkout's ``pyproject.toml``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedsim")
    except PackageNotFoundError:
        pass
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "0+unknown"
    if project.get("name") != "fedsim":
        return "0+unknown"
    return str(project.get("version", "0+unknown"))


def __getattr__(name: str):
    """``fedsim.__version__``, read from the package metadata on first use."""
    if name == "__version__":
        value = _version()
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
