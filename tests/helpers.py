"""Shared test helpers: a piece's context, random connected graphs, a run that kills itself."""

from __future__ import annotations

import textwrap

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


# ``python -c KILLER SCENARIO RUN_DIR K``: a run that SIGKILLs itself once row K is written
# (its checkpoint, if due, is not): what the kill -9 then --resume tests start from.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import fedsim

    scenario, run_dir, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def die(row):
        if row["round"] == kill_at:  # rows of kill_at are written, its checkpoint is not
            os.kill(os.getpid(), signal.SIGKILL)

    fedsim.run(scenario, run_dir=run_dir, callback=die)
""")
