"""The GPU suite runs end to end on CPU at its tiny size (issue #14): CI proves the driver works."""

import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_gpu_suite_tiny_on_cpu(tmp_path):
    import gpu_suite
    out = tmp_path / "gpu_suite.json"
    assert gpu_suite.main(["--size", "tiny", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(gpu_suite.SECTIONS) <= set(res) and res["commit"]
    for variant in ("float32", "float32_jit", "mixed_float16", "mixed_float16_jit"):
        ratios = res["step_time"][variant]["ratio_to_natural"]
        assert ratios["natural"] == 1.0 and set(ratios) == set(gpu_suite.OBJECTIVES)
    f32 = res["step_time"]["float32"]["ratio_to_natural"]
    assert all(v is not None and v >= 1.0 for v in f32.values())  # every penalty costs more than CE alone
    assert f32["trades_10"] > f32["jacobian_dual"]  # ten attack steps cost more than one double backprop
    assert res["pgd_throughput"]["pgd_over_limit"] > 0
    if not res["gpus"]:
        assert res["mirrored"]["scaling_efficiency"] == 1.0 and res["mirrored"]["devices"] == ["/cpu:0"]
    assert all(math.isfinite(v) for v in res["cifar_smoke"]["final_loss"].values())
    assert res["cifar_smoke"]["steps"] == 4
