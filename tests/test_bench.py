"""``srn bench`` on tiny settings: the JSON's keys and sane values (no timing assertions)."""

import json
import math

import pytest

from srn.bench import BenchConfig, format_table, parse_size, run_benchmark
from srn.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def results():
    config = BenchConfig(device="cpu", sizes=((64, 64),), warmup=0, iters=1, batch=2,
                         backbone="resnet18", width=32, matmul_size=128)
    return run_benchmark(config)


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_results_have_every_number(results):
    assert results["device"]["type"] == "cpu" and results["settings"]["sizes"] == ["64x64"]
    assert positive(results["matmul"]["tflops"])
    for model in ("srn", "peer"):
        entry = results[model]
        assert entry["params_m"] > 1
        assert positive(entry["gflops"]["64x64"])
        assert positive(entry["latency_ms"]["64x64"]["end_to_end"])
        assert entry["peak_memory_mb"]["64x64"] >= 0
        assert positive(entry["matrix_rate_fraction"]["64x64"])
        assert entry["throughput"]["batch"] == 2 and positive(entry["throughput"]["images_per_s"])
    latency = results["srn"]["latency_ms"]["64x64"]
    assert latency["forward"] + latency["postprocess"] == pytest.approx(latency["end_to_end"])
    for key in ("postprocess_share", "postprocess_dense_share"):
        assert 0 < latency[key] < 1
    assert set(results["ratios"]) >= {"latency_64x64", "gflops_64x64", "throughput"}
    json.dumps(results, allow_nan=False)
    assert "RetinaNet-R50" in format_table(results)


def test_flops_match_spec():
    # SPEC §1: SRN-R50 costs 1,290 GFLOP at 1024x1024, RetinaNet-R50-FPN (one class) 415.
    from srn.bench import _meta_srn, _build_peer, _peer_network, count_gflops
    from srn.config import ModelConfig

    size = (1024, 1024)
    assert count_gflops(lambda: _meta_srn(ModelConfig()), lambda m, x: m(x), size) == pytest.approx(1290.4, abs=0.5)
    assert count_gflops(lambda: _build_peer(BenchConfig(), size), _peer_network, size) == pytest.approx(415.5, abs=0.5)


def test_sizes_are_width_by_height_and_bad_ones_fail(capsys):
    assert parse_size("640x480") == (480, 640)
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", "640by480"])
    assert "640by480" in capsys.readouterr().err
