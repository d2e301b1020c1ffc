"""The scenarios and topologies that ship inside the package (wheel or checkout).

They live in ``fedsim/scenarios/`` and ``fedsim/topologies/`` (package data, so a
wheel carries them); the repository's top-level ``scenarios/`` and ``topologies/``
are links to these folders, so ``fedsim run scenarios/quickstart.toml`` works in a
checkout and ``fedsim run quickstart`` works anywhere.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SCENARIOS_DIR = PACKAGE_DIR / "scenarios"
TOPOLOGIES_DIR = PACKAGE_DIR / "topologies"


def shipped_scenarios() -> dict[str, Path]:
    """``{name: file}`` for the shipped scenarios, by file stem, sorted."""
    if not SCENARIOS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(SCENARIOS_DIR.glob("*.toml"))}


def scenario_path(arg: str | Path) -> Path:
    """The scenario file ``arg`` names: an existing path as is, else a shipped scenario.

    A bare name (``"quickstart"`` or ``"quickstart.toml"``, no folder) that is not a
    file here is looked up among the shipped scenarios. Anything else is returned
    unchanged, so loading it reports the missing file.
    """
    path = Path(arg)
    try:
        if path.exists():
            return path
    except (OSError, ValueError):  # a name that cannot be a path (too long, a NUL byte)
        return path
    if len(path.parts) == 1 and path.suffix in ("", ".toml"):
        found = shipped_scenarios().get(path.stem)
        if found is not None:
            return found
    return path
