"""The targets of issue 15 read off a `benchmarks/gpu_check.sh` folder, as a markdown table.

    python benchmarks/gpu_summary.py OUT_DIR      # prints it and writes OUT_DIR/summary.md

Reads the benches' JSON lines (limit_10k, limit_100k, scale_100k, scale_1m) and the
status lines the check wrote; a bench that did not finish is a row saying so, not an
error. Targets: fedsim / hand-written <= 1.25 at 10k and 100k clients (against the
vmapped program, and the fused one where fedsim trains with its fused engine), a round
of 1M clients in <= 1.5 s, and the simulator's overhead below 1 us per client.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RATIO_MAX = 1.25
ROUND_1M_MAX_S = 1.5
OVERHEAD_MAX_US = 1.0


def _json(folder: Path, name: str) -> dict | None:
    """The last JSON line of ``name.json``, or None when the bench wrote none."""
    path = folder / f"{name}.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def _size(fields: dict, key: str, default: str) -> str:
    """``fields[key]`` with thousands separators, or ``default`` when the bench wrote none."""
    return f"{fields[key]:,}" if key in fields else default


def _row(what: str, value: float | None, target: float, unit: str = "") -> str:
    if value is None:
        return f"| {what} | did not finish | <= {target:g}{unit} | no |"
    met = "yes" if value <= target else "no"
    return f"| {what} | {value:g}{unit} | <= {target:g}{unit} | {met} |"


def rows(folder: Path) -> list[str]:
    """The table: one row per target, then the figures that have no target."""
    out = ["| check | measured | target | met |", "|---|---:|---:|---|"]
    for size in ("10k", "100k"):
        lim = _json(folder, f"limit_{size}") or {}
        clients = _size(lim, "clients", size)
        for side, label in (("limit", "vmapped"), ("limit_fused", "fused")):
            if lim and f"{side}_s" not in lim:
                continue  # fedsim did not train with its fused engine: no like-for-like side
            out.append(_row(f"fedsim / hand-written ({label}), {clients} clients",
                            lim.get(f"ratio_fedsim_over_{side}"), RATIO_MAX))
    big = _json(folder, "scale_1m") or {}
    out.append(_row(f"round of {_size(big, 'cohort', '1M')} clients (median)",
                    big.get("round_s"), ROUND_1M_MAX_S, " s"))
    for name in ("scale_100k", "scale_1m"):
        sc = _json(folder, name) or {}
        out.append(_row(f"overhead per client, {_size(sc, 'cohort', name[6:])} cohort",
                        sc.get("overhead_us_per_client"), OVERHEAD_MAX_US, " us"))
    out.append("")
    for name in ("limit_10k", "limit_100k"):
        lim = _json(folder, name)
        if lim:
            sides = ", ".join(f"{k[:-2]} {lim[k]} s" for k in ("fedsim_s", "limit_s",
                                                               "limit_fused_s") if k in lim)
            out.append(f"- {name}: {sides}; models agree: {lim.get('models_agree')}")
    for name in ("scale_100k", "scale_1m"):
        sc = _json(folder, name)
        if sc:
            out.append(f"- {name}: round {sc['round_s']} s, {sc['client_updates_per_s']:,.0f} "
                       f"client updates/s, peak device memory {sc['peak_device_memory_mb']} MB "
                       f"on {sc['device']}")
    status = folder / "status.txt"
    if status.is_file():
        out += ["", "```", *status.read_text().splitlines(), "```"]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: gpu_summary.py OUT_DIR (the folder gpu_check.sh wrote)", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    text = "\n".join(rows(folder)) + "\n"
    print(text, end="")
    try:
        (folder / "summary.md").write_text(text)
    except OSError as err:  # the table is printed above: nothing is lost
        print(f"gpu_summary.py: cannot write {folder / 'summary.md'}: {err.strerror}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
