"""The runner's update buffer (``fedsim/runs/workspace.py``): reused from round to round,
given up when a stage keeps a view of the rows."""

from __future__ import annotations

from typing import NamedTuple

import torch

from fedsim.runs.workspace import UpdateWorkspace


class _State(NamedTuple):
    memory: torch.Tensor
    step: int


def test_rows_reuse_one_buffer_and_grow_when_needed() -> None:
    ws = UpdateWorkspace(5, torch.float32, "cpu")
    a = ws.rows(4)
    assert a.shape == (4, 5) and a.is_contiguous()
    b = ws.rows(3)
    assert b.data_ptr() == a.data_ptr()  # the same memory, fewer rows
    c = ws.rows(6)
    assert c.shape == (6, 5) and ws.rows(2).data_ptr() == c.data_ptr()


def test_a_state_holding_a_view_keeps_the_buffer_for_itself() -> None:
    ws = UpdateWorkspace(5, torch.float32, "cpu")
    rows = ws.rows(4)
    ws.check({"uplink": None, "aggregate": _State(torch.zeros(5), 1), "server": [rows.sum(0)]})
    assert ws.rows(4).data_ptr() == rows.data_ptr()  # nothing kept a view: reused
    ws.check({"aggregate": _State(rows[1:3], 2)})  # e.g. a memory of last round's rows
    kept = rows[1:3].clone()
    fresh = ws.rows(4)
    assert fresh.data_ptr() != rows.data_ptr()
    fresh.fill_(7.0)
    assert torch.equal(rows[1:3], kept)  # the stage's view is left alone
