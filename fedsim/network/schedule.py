"""What the clock hands to the runner: who did what, and when (no torch here).

A round's schedule holds its clients as arrays (``*_ids``, ``status_codes``, the three
time columns), so a 100k-client round makes no Python object per client. The tuple
views (``selected``, ``completed``, ..., ``timings``) are built on first access.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

STATUS = ("ok", "straggler", "dropped")  # status_codes 0, 1, 2


@dataclass(frozen=True)
class ClientTiming:
    """One selected client's round, in simulated seconds since the run started."""

    client: int
    status: str  # "ok" (aggregated) | "straggler" (finished too late or not at all) | "dropped"
    download_done_s: float  # model received (inf if dropped before)
    compute_done_s: float  # local training done (inf if dropped before)
    upload_done_s: float  # update received by the server (inf if never)


@dataclass(frozen=True, eq=False)
class RoundSchedule:
    """One round as the clock saw it.

    Attributes:
        selected_ids: int64 ``[m]`` clients asked to train, in selection order.
        completed_ids: clients whose update is aggregated, in arrival order.
        status_codes: int64 ``[m]`` per selected client: 0 ok, 1 straggler, 2 dropped.
        times: float ``[3, m]`` per selected client: download, compute and upload done
            (inf where it did not happen by the round's end).
        bytes_down: bytes the server sent this round.
        bytes_up: bytes clients sent this round (including stragglers' late uploads).
    """

    round: int
    start_s: float
    end_s: float
    selected_ids: np.ndarray
    completed_ids: np.ndarray
    status_codes: np.ndarray
    times: np.ndarray
    bytes_down: int
    bytes_up: int

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoundSchedule):
            return NotImplemented
        return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in (
            "round", "start_s", "end_s", "selected_ids", "completed_ids", "status_codes",
            "times", "bytes_down", "bytes_up"))

    __hash__ = None  # type: ignore[assignment]  # equal by value, and holds arrays

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def num_stragglers(self) -> int:
        return int((self.status_codes == 1).sum())

    @property
    def num_dropped(self) -> int:
        return int((self.status_codes == 2).sum())

    @cached_property
    def selected(self) -> tuple[int, ...]:
        return tuple(self.selected_ids.tolist())

    @cached_property
    def completed(self) -> tuple[int, ...]:
        return tuple(self.completed_ids.tolist())

    @cached_property
    def stragglers(self) -> tuple[int, ...]:
        """Selected, not dropped, not aggregated (selection order)."""
        return tuple(self.selected_ids[self.status_codes == 1].tolist())

    @cached_property
    def dropped(self) -> tuple[int, ...]:
        """Selected clients that went offline (selection order)."""
        return tuple(self.selected_ids[self.status_codes == 2].tolist())

    @cached_property
    def timings(self) -> tuple[ClientTiming, ...]:
        """One ``ClientTiming`` per selected client, in selection order."""
        return tuple(ClientTiming(c, STATUS[s], d, p, u) for c, s, d, p, u in zip(
            self.selected_ids.tolist(), self.status_codes.tolist(), *self.times.tolist(),
            strict=True))
