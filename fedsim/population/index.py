"""Every client's sample indices as one flat array plus offsets (CSR), on the device once.

A round's cohort is then an array of client ids: ``ClientIndex.cohort(ids)`` gathers
the cohort's indices end to end with a few vector operations, whatever the number of
clients (no tensor, no Python object per client). ``Population.train`` takes the
result (a ``CohortIndex``) where it also takes a list of per-client index tensors;
both give the same concatenation, so the same shuffles and the same training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class CohortIndex(NamedTuple):
    """A cohort's sample indices: ``flat`` (int64, on the device) holds client 0's indices,
    then client 1's, ...; ``counts`` (int64 ``[m]``, on the CPU) how many each has."""

    flat: Tensor
    counts: Tensor


class ClientIndex:
    """The sample indices of clients ``0..n-1`` in CSR form.

    Args:
        client_indices: one 1-D integer array per client (indices into the samples).
        num_samples: how many samples there are; every index must lie in ``[0, num_samples)``.
        device: where ``flat`` lives.

    Raises:
        IndexError: an index outside ``[0, num_samples)``.
    """

    def __init__(self, client_indices: Sequence[np.ndarray], num_samples: int,
                 device: str | torch.device = "cpu"):
        n = len(client_indices)
        self.sizes = np.fromiter((len(ix) for ix in client_indices), dtype=np.int64, count=n)
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=self.offsets[1:])
        flat = (np.concatenate([np.asarray(ix).reshape(-1) for ix in client_indices])
                if n else np.zeros(0)).astype(np.int64, copy=False)
        if flat.size and (flat.min() < 0 or flat.max() >= num_samples):
            raise IndexError(f"client indices must lie in [0, {num_samples})")
        self.device = torch.device(device)
        self.flat = torch.from_numpy(flat).to(self.device)
        self._starts = torch.from_numpy(self.offsets[:-1]).to(self.device)
        # every client the same size: the flat array is an [n, size] matrix, and a cohort
        # is a gather of its rows
        same = n > 0 and bool((self.sizes == self.sizes[0]).all())
        self._rows = self.flat.view(n, int(self.sizes[0])) if same else None

    def __len__(self) -> int:
        return len(self.sizes)

    def cohort(self, ids: np.ndarray) -> CohortIndex:
        """The indices of clients ``ids`` (in that order), end to end.

        Args:
            ids: int ``[m]`` client ids (repeats allowed).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        counts = torch.from_numpy(self.sizes[ids])
        m = len(ids)
        if m == len(self.sizes) and (m == 0 or (ids[0] == 0 and (np.diff(ids) == 1).all())):
            return CohortIndex(self.flat, counts)  # everyone, in id order: the whole array
        ids_dev = torch.from_numpy(ids).to(self.device)
        if self._rows is not None:
            return CohortIndex(self._rows.index_select(0, ids_dev).reshape(-1), counts)
        total = int(counts.sum())
        counts_dev = counts.to(self.device)
        starts = self._starts[ids_dev]
        # position k of the cohort's j-th client is starts[j] + (k - first[j])
        first = torch.cumsum(counts_dev, 0) - counts_dev
        shift = torch.repeat_interleave(starts - first, counts_dev, output_size=total)
        pos = torch.arange(total, device=self.device) + shift
        return CohortIndex(self.flat[pos], counts)
