"""`affordance-clip benchmark --short`: every documented figure is written and finite (no timing goals)."""
from __future__ import annotations

import json
import math

from affordance_clip_ros.benchmark import CPU_KEYS, DOCUMENTED_KEYS, PER_SIZE_KEYS
from affordance_clip_ros.cli import main


def test_short_benchmark_writes_every_documented_key(tmp_path, capsys):
    out = tmp_path / "bench" / "figures.json"
    assert main(["benchmark", "--short", "--device", "cpu", "--repeats", "1", "--warmup", "0",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    expected = DOCUMENTED_KEYS + CPU_KEYS + tuple(f"{k}_416" for k in PER_SIZE_KEYS)
    missing = [k for k in expected if k not in results]
    assert not missing, missing
    numbers = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert all(math.isfinite(v) for v in numbers.values()), {k: v for k, v in numbers.items() if not math.isfinite(v)}
    assert results["clip_model"] == "RN-tiny" and results["device"] == "cpu"
    assert results["default_backend"].startswith(("onnxruntime-", "torch-"))
    assert -1.0 <= results["cpu_fast_path_corr"] <= 1.0 and results["peak_rss_mb"] > 0
    printed = capsys.readouterr().out
    assert "cpu_speedup_vs_naive_fp32" in printed and "prompt_scaling_16_vs_1" in printed
