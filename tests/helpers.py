"""Shared test helpers: a piece's context, random connected graphs, a run killed with
SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import networkx as nx
import torch
from hypothesis import strategies as st

from fedsim.stages.base import Ctx


def make_ctx(weights: torch.Tensor, seed: int = 0, senders=None, byzantine=None) -> Ctx:
    """A Ctx for rows 0..m-1 (or ``senders``), none Byzantine unless given."""
    m = weights.shape[0]
    return Ctx(
        step=0,
        senders=torch.arange(m) if senders is None else torch.as_tensor(senders),
        weights=weights,
        byzantine=torch.zeros(m, dtype=torch.bool) if byzantine is None else byzantine,
        gen=torch.Generator().manual_seed(seed),
    )


@st.composite
def connected_graphs(draw: st.DrawFn, max_nodes: int = 20) -> nx.Graph:
    """A random tree (each node under an earlier one) plus random extra edges."""
    n = draw(st.integers(min_value=2, max_value=max_nodes))
    G = nx.Graph()
    G.add_nodes_from(range(n))
    for i in range(1, n):
        G.add_edge(i, draw(st.integers(min_value=0, max_value=i - 1)))
    pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
    for u, v in draw(st.lists(pairs, max_size=2 * n)):
        if u != v:
            G.add_edge(u, v)
    return G


ROOT = Path(__file__).resolve().parents[1]

# A run that SIGKILLs itself once row K is written (its checkpoint, if due, is not):
# what the kill -9 then --resume tests start from.
_KILLER = textwrap.dedent("""
    import os, signal, sys
    import fedsim

    scenario, run_dir, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def die(row):
        if row["round"] == kill_at:  # rows of kill_at are written, its checkpoint is not
            os.kill(os.getpid(), signal.SIGKILL)

    fedsim.run(scenario, run_dir=run_dir, callback=die)
""")


def subprocess_env() -> dict:
    """The environment of a ``fedsim`` child process: this checkout, no progress lines."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "FEDSIM_QUIET": "1"}


def kill_then_resume(path: Path, run_dir: Path, kill_at: int) -> subprocess.CompletedProcess:
    """Run the scenario ``path`` into ``run_dir`` in a child that SIGKILLs itself after row
    ``kill_at`` (checked: killed, summary still ``running``), then ``fedsim run --resume``
    it in another child; returns the resume's completed process."""
    killer = path.parent / "killer.py"
    killer.write_text(_KILLER)
    died = subprocess.run([sys.executable, str(killer), str(path), str(run_dir), str(kill_at)],
                          cwd=path.parent, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    return subprocess.run([sys.executable, "-m", "fedsim", "run", str(path), "--quiet",
                           "--resume", str(run_dir)], cwd=path.parent, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
