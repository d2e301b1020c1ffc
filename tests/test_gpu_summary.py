"""benchmarks/gpu_summary.py: the targets of the GPU check, met or not, from its folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_summary.py"
spec = importlib.util.spec_from_file_location("gpu_summary", SCRIPT)
gpu_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_summary)


def _write(folder: Path, name: str, **fields) -> None:
    (folder / f"{name}.json").write_text("progress line\n" + json.dumps(fields) + "\n")


def test_each_target_is_met_or_not_and_a_missing_bench_says_so(tmp_path):
    _write(tmp_path, "limit_10k", clients=10000, fedsim_s=0.02, limit_s=0.018,
           limit_fused_s=0.01, ratio_fedsim_over_limit=1.11,
           ratio_fedsim_over_limit_fused=2.0, models_agree=True)
    _write(tmp_path, "scale_1m", cohort=1000000, round_s=1.2, overhead_us_per_client=0.05,
           client_updates_per_s=8.3e5, peak_device_memory_mb=9e4, device="NVIDIA H200")
    assert gpu_summary.main([str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "| fedsim / hand-written (vmapped), 10,000 clients | 1.11 | <= 1.25 | yes |" in text
    assert "| fedsim / hand-written (fused), 10,000 clients | 2 | <= 1.25 | no |" in text
    assert "| round of 1,000,000 clients (median) | 1.2 s | <= 1.5 s | yes |" in text
    assert "| fedsim / hand-written (vmapped), 100k clients | did not finish |" in text
    assert "830,000 client updates/s" in text


def test_a_folder_that_is_not_there_is_one_line(tmp_path, capsys):
    assert gpu_summary.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_folder_it_cannot_write_is_one_line_after_the_table(tmp_path, capsys, monkeypatch):
    _write(tmp_path, "scale_1m", cohort=1000, round_s=0.5, overhead_us_per_client=0.2,
           client_updates_per_s=2e3, peak_device_memory_mb=None, device="cpu")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gpu_summary.Path, "write_text", refuse)
    assert gpu_summary.main([str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert "| round of 1,000 clients (median) | 0.5 s | <= 1.5 s | yes |" in out.out
    assert out.err.count("\n") == 1 and "Permission denied" in out.err
