"""``srn bench`` on tiny settings: the JSON's keys and sane values (no timing assertions)."""

import argparse
import json
import math
import re
from dataclasses import replace

import pytest
import torch

from srn.analysis import bench
from srn.analysis.bench import BenchConfig, format_table, run_benchmark
from srn.cli import main
from srn.cli.bench import add_bench_args, config_from_args, parse_size
from srn.errors import SRNError


pytestmark = pytest.mark.usefixtures("one_thread")

TINY = BenchConfig(device="cpu", sizes=((64, 64),), warmup=0, iters=1, batch=2,
                   model="srn_r50", backbone="resnet18", width=32, matmul_size=128)


@pytest.fixture(scope="module")
def results():
    return run_benchmark(TINY)


@pytest.fixture(scope="module")
def ort_results():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return run_benchmark(replace(TINY, backend="onnxruntime"))


def key_paths(tree, prefix="") -> set[str]:
    """Every key of a nested dict as a dotted path."""
    if not isinstance(tree, dict):
        return set()
    paths = set()
    for key, value in tree.items():
        paths |= {prefix + key} | key_paths(value, f"{prefix}{key}.")
    return paths


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_results_have_every_number(results):
    assert results["device"]["type"] == "cpu" and results["settings"]["sizes"] == ["64x64"]
    # On the CPU no matmul yardstick is measured, and no share of one is reported (see the module doc).
    assert "matmul" not in results and "matmul_share" not in json.dumps(results)
    for model in ("srn", "peer"):
        entry = results[model]
        assert entry["params_m"] > 1
        assert positive(entry["gflops"]["64x64"])
        latency = entry["latency_ms"]["64x64"]["end_to_end"]
        assert positive(latency)
        assert entry["peak_memory_mb"]["64x64"] >= 0
        assert entry["tflops"]["64x64"] == pytest.approx(entry["gflops"]["64x64"] / latency)  # GFLOP / ms = TFLOP/s
        assert entry["throughput"]["batch"] == 2 and positive(entry["throughput"]["images_per_s"])
    latency = results["srn"]["latency_ms"]["64x64"]
    assert latency["forward"] + latency["postprocess"] == pytest.approx(latency["end_to_end"])
    for key in ("postprocess_share", "postprocess_dense_share"):
        assert 0 < latency[key] < 1
    assert set(results["ratios"]) >= {"latency_64x64", "gflops_64x64", "throughput"}
    json.dumps(results, allow_nan=False)
    assert "RetinaNet-R50" in format_table(results)


def test_flops_match_spec():
    # docs/design.md, Network: SRN-R50 costs 1,290 GFLOP at 1024x1024, RetinaNet-R50-FPN (one class) 415.
    from srn.analysis.bench import _meta_srn, _build_peer, _peer_network, count_gflops
    from srn.config import ModelConfig

    size = (1024, 1024)
    assert count_gflops(lambda: _meta_srn(ModelConfig()), lambda m, x: m(x), size) == pytest.approx(1290.4, abs=0.5)
    assert count_gflops(lambda: _build_peer(BenchConfig(), size), _peer_network, size) == pytest.approx(415.5, abs=0.5)


def test_sizes_are_width_by_height_and_bad_ones_fail(capsys):
    assert parse_size("640x480") == (480, 640)
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", "640by480"])
    assert "640by480" in capsys.readouterr().err


def test_onnxruntime_backend_has_every_number_of_the_torch_backend(results, ort_results):
    assert ort_results["settings"]["backend"] == "onnxruntime" and results["settings"]["backend"] is None
    # What ran: a random network has no file; with the onnxruntime backend it was exported to fp32 ONNX.
    assert (results["srn_backend"], results["srn_weights"], results["srn_exported"], results["quantization"]) == (
        "torch", None, False, None)
    assert (ort_results["srn_backend"], ort_results["srn_weights"], ort_results["srn_exported"], ort_results["quantization"]) == (
        "onnxruntime", None, True, None)
    assert key_paths(ort_results) == key_paths(results) | {"device.onnxruntime"}
    srn = ort_results["srn"]
    assert srn["params_m"] == results["srn"]["params_m"]
    assert srn["gflops"] == results["srn"]["gflops"]  # counted on the same PyTorch module
    latency = srn["latency_ms"]["64x64"]
    for key in ("end_to_end", "forward", "postprocess", "postprocess_dense"):
        assert positive(latency[key])
    assert latency["forward"] + latency["postprocess"] == pytest.approx(latency["end_to_end"])
    for key in ("postprocess_share", "postprocess_dense_share"):
        assert 0 < latency[key] < 1
    assert srn["peak_memory_mb"]["64x64"] >= 0 and positive(srn["tflops"]["64x64"])
    assert srn["throughput"]["batch"] == 2 and positive(srn["throughput"]["images_per_s"])
    assert 0 < srn["throughput"]["postprocess_share"] < 1
    assert all(math.isfinite(v) for k, v in ort_results["ratios"].items() if not k.startswith("peak_memory"))
    json.dumps(ort_results, allow_nan=False)
    assert "SRN on onnxruntime" in format_table(ort_results) and "exported to fp32 ONNX" in format_table(ort_results)
    assert "SRN on torch" in format_table(results)


def test_onnxruntime_backend_runs_the_session(monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    batches = []
    run = ort.InferenceSession.run

    def spy(self, output_names, feed, *args, **kwargs):
        (images,) = feed.values()
        batches.append(images.shape)
        return run(self, output_names, feed, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", spy)
    # The PyTorch network may run while it is exported, never while it is timed.
    monkeypatch.setattr(bench._TorchSRN, "phases", lambda self, *args, **kwargs: pytest.fail("PyTorch SRN timed"))
    config = replace(TINY, sizes=((64, 96),), warmup=1, iters=2, peer=False, backend="onnxruntime")
    results = run_benchmark(config)
    latency, dense, throughput = 1 + 2, 1 + 2, 1 + 2  # warmup + iters per phase (dense warms up once at most)
    assert batches == [(1, 3, 64, 96)] * (latency + dense) + [(2, 3, 64, 96)] * throughput
    assert "throughput" in results["srn"] and "peer" not in results


@pytest.mark.parametrize(("flags", "message"), [
    (["--device", "cuda"], "the onnxruntime backend runs on the CPU only"),
    (["--device", "cpu", "--compile"], "torch.compile needs the torch backend"),
    (["--device", "cpu", "--dtype", "bf16"], "bf16 needs the torch backend"),
    (["--device", "cpu", "--channels-last"], "channels_last needs the torch backend"),
])
def test_onnxruntime_backend_refuses_what_it_cannot_do(flags, message, capsys):
    argv = ["--backend", "onnxruntime", "--sizes", "64x64", *flags]
    if "cuda" in flags and not torch.cuda.is_available():
        message = "device 'cuda': no CUDA GPU is available on this machine"  # the device is checked first
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    with pytest.raises(SRNError, match=re.escape(message)):
        run_benchmark(config_from_args(parser.parse_args(argv)))
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"srn bench: error: {message}") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["bench", "--backend", "tensorrt"])


def test_torch_backend_runs_detectors_runner_on_a_photo(monkeypatch, shared_dir):
    calls = []
    call = bench.Runner.__call__

    def spy(self, images, mark=None):
        calls.append((next(self.net.parameters()).dtype, tuple(images.shape), self.outputs_hook is not None))
        assert images.max() > images.min() and float(images[0, 0, 0, 0]) != float(images[0, 0, 0, 1])
        return call(self, images, mark)

    monkeypatch.setattr(bench.Runner, "__call__", spy)
    photo = str(shared_dir / "data/demo/images/ageitgey__examples_two_people.jpg")
    config = replace(TINY, sizes=((64, 96),), throughput_size=(80, 80), warmup=1, iters=1, peer=False, dtype="bf16", image=photo)
    results = run_benchmark(config)
    bf16 = torch.bfloat16
    # warmup + iters per phase: latency, dense latency (its own runner), throughput at its own size
    assert calls == [(bf16, (1, 3, 64, 96), False)] * 2 + [(bf16, (1, 3, 64, 96), True)] * 2 + [(bf16, (2, 3, 80, 80), False)] * 2
    assert results["settings"]["throughput_size"] == "80x80" and results["settings"]["image"] == photo
    assert results["srn"]["throughput"]["size"] == "80x80"
    assert positive(results["srn"]["gflops"]["80x80"]) and results["srn"]["gflops"]["80x80"] > results["srn"]["gflops"]["96x64"]


def test_cuda_graphs_need_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["bench", "--device", "cpu", "--cuda-graphs", "--sizes", "64x64"]) == 2
    assert capsys.readouterr().err == "srn bench: error: CUDA graphs need a CUDA device\n"


def test_the_shipped_model_is_measured_by_default_and_srn_r50_on_request():
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    shipped = config_from_args(parser.parse_args([]))
    assert (shipped.model, shipped.weights, shipped.backend) == ("shipped", None, None)
    r50 = config_from_args(parser.parse_args(["--model", "srn_r50"]))
    assert (r50.model, r50.backbone, r50.width) == ("srn_r50", "resnet50", 256)
    small = config_from_args(parser.parse_args(["--backbone", "resnet18", "--width", "32"]))
    assert (small.model, small.backbone, small.width) == ("srn_r50", "resnet18", 32)  # a shape asks for a random network
    # What the default run builds: the shipped model's 2.6 M parameters, not SRN-R50's 53.4 M.
    from srn.analysis.bench import _build_srn

    model, _, model_config = _build_srn(shipped, torch.device("cpu"))
    assert model_config.backbone == "mobilenet_v2"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.6e6, rel=0.05)
    results = run_benchmark(replace(shipped, device="cpu", sizes=((64, 64),), warmup=0, iters=1, batch=0, peer=False,
                                    backend="torch"))
    assert results["srn"]["model"] == "shipped" and results["srn"]["params_m"] == pytest.approx(2.6, rel=0.05)
    assert "SRN on torch (shipped, srn_mobilenet_v2.pt)" in format_table(results)


SHIPPED_TINY = BenchConfig(device="cpu", sizes=((64, 64),), warmup=0, iters=1, batch=0, peer=False)


def test_on_the_cpu_the_default_times_the_shipped_int8_file_in_onnxruntime(monkeypatch):
    pytest.importorskip("onnxruntime")
    from srn.inference.detector import DEFAULT_CPU_WEIGHTS, DEFAULT_WEIGHTS

    if not DEFAULT_CPU_WEIGHTS.is_file():
        pytest.skip(f"{DEFAULT_CPU_WEIGHTS} is not installed")
    opened = []
    monkeypatch.setattr(bench._TorchSRN, "phases", lambda self, *args, **kwargs: pytest.fail("PyTorch SRN timed"))
    # No export: the shipped file is run as it is.
    monkeypatch.setattr("srn.export.onnx.export_onnx", lambda *args, **kwargs: pytest.fail("exported"))
    original = bench._OrtNetwork.reset

    def spy(self):
        opened.append(self.path)
        original(self)

    monkeypatch.setattr(bench._OrtNetwork, "reset", spy)
    results = run_benchmark(SHIPPED_TINY)
    assert results["settings"]["backend"] is None  # asked: what srn detect runs
    assert opened and set(opened) == {DEFAULT_CPU_WEIGHTS}
    assert results["srn_backend"] == "onnxruntime" and results["srn_weights"] == str(DEFAULT_CPU_WEIGHTS)
    assert results["srn_exported"] is False and results["quantization"] == "int8-qdq-per-channel"
    from srn.inference.int8_kernels import u8s8_saturates

    assert results["exact_int8_weights"] == (68 if u8s8_saturates() else 0)
    assert "onnxruntime" in results["device"]
    monkeypatch.undo()
    # FLOPs and parameters of the shipped checkpoint that the int8 file was quantised from.
    torch_results = run_benchmark(replace(SHIPPED_TINY, backend="torch"))
    assert torch_results["srn_backend"] == "torch" and torch_results["srn_weights"] == str(DEFAULT_WEIGHTS)
    assert torch_results["quantization"] is None
    assert results["srn"]["gflops"] == torch_results["srn"]["gflops"] and positive(results["srn"]["gflops"]["64x64"])
    assert results["srn"]["params_m"] == pytest.approx(torch_results["srn"]["params_m"]) == pytest.approx(2.6, rel=0.05)
    assert positive(results["srn"]["latency_ms"]["64x64"]["end_to_end"]) and positive(results["srn"]["tflops"]["64x64"])
    table = format_table(results)
    exact = ", weights re-encoded for exact int8 sums: this CPU's int8 kernel clips" if u8s8_saturates() else ""
    assert f"SRN on onnxruntime {results['device']['onnxruntime']} (shipped, srn_mobilenet_v2.int8.onnx, int8-qdq-per-channel{exact})" in table
    json.dumps(results, allow_nan=False)


def test_the_default_is_torch_where_srn_detect_runs_torch(monkeypatch):
    # A random network, and bf16 (which the Detector runs in PyTorch): the torch backend, no ONNX.
    monkeypatch.setattr(bench._OrtNetwork, "reset", lambda self: pytest.fail("onnxruntime opened"))
    for config in (replace(TINY, batch=0, peer=False), replace(SHIPPED_TINY, dtype="bf16")):
        results = run_benchmark(config)
        assert results["srn_backend"] == "torch" and results["quantization"] is None and "onnxruntime" not in results["device"]


def test_without_onnxruntime_the_default_falls_back_to_torch_with_a_notice(monkeypatch):
    from srn.inference.detector import DEFAULT_WEIGHTS

    find_spec = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    messages = []
    results = run_benchmark(SHIPPED_TINY, log=messages.append)
    assert results["srn_backend"] == "torch" and results["srn_weights"] == str(DEFAULT_WEIGHTS)
    notices = [m for m in messages if "onnxruntime" in m]
    assert len(notices) == 1 and "\n" not in notices[0] and "PyTorch" in notices[0]


def test_an_onnx_file_runs_as_it_is_and_its_flops_are_not_counted(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from srn.export.onnx import export_onnx
    from srn.model import build_model
    from srn.config import ModelConfig

    path = tmp_path / "small.onnx"
    torch.manual_seed(0)
    export_onnx(build_model(ModelConfig(backbone="resnet18", width=32)).eval(), path, sample_size=(64, 64), backbone="resnet18")
    config = replace(SHIPPED_TINY, weights=str(path), batch=2)
    results = run_benchmark(config)
    assert results["srn_backend"] == "onnxruntime" and results["srn_weights"] == str(path)
    assert results["srn_exported"] is False and results["quantization"] is None
    srn = results["srn"]
    assert srn["model"] == str(path) and srn["params_m"] is None
    assert srn["gflops"] == {"64x64": None} and srn["tflops"] == {"64x64": None} and srn["throughput"]["tflops"] is None
    assert positive(srn["latency_ms"]["64x64"]["end_to_end"]) and positive(srn["throughput"]["images_per_s"])
    json.dumps(results, allow_nan=False)
    table = format_table(results)
    assert f"SRN on onnxruntime {results['device']['onnxruntime']} ({path})" in table
    assert re.search(r"GFLOP 64x64 +n/a", table)
    # The command line says the same, and writes it as JSON.
    out = tmp_path / "bench.json"
    assert main(["bench", "--weights", str(path), "--device", "cpu", "--sizes", "64x64", "--iters", "1", "--warmup", "0",
                 "--batch", "0", "--no-peer", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["srn_backend"] == "onnxruntime"
    assert "SRN on onnxruntime" in capsys.readouterr().out


def test_an_onnx_file_with_the_torch_backend_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "some.onnx").write_bytes(b"x")  # never read: the settings are refused first
    message = "some.onnx: an ONNX file needs the onnxruntime backend, not torch"
    with pytest.raises(SRNError, match=re.escape(message)):
        run_benchmark(replace(SHIPPED_TINY, weights="some.onnx", backend="torch"))
    assert main(["bench", "--weights", "some.onnx", "--backend", "torch", "--device", "cpu", "--sizes", "64x64"]) == 2
    assert capsys.readouterr().err == f"srn bench: error: {message}\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "srn_r50", "--weights", "w.pt"], "give --model or --weights, not both"),
    (["--model", "shipped", "--backbone", "resnet18"], "--backbone and --width shape the random network of --model srn_r50"),
])
def test_contradicting_model_options_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"x")
    assert main(["bench", *argv]) == 2
    assert capsys.readouterr().err == f"srn bench: error: {message}\n"


def test_the_cli_spells_the_librarys_names_and_defaults():
    from srn.cli import bench as command

    defaults = BenchConfig()
    assert command.MODELS == bench.MODELS and command.BACKENDS == bench.BACKENDS
    assert tuple(sorted(command.DTYPES)) == tuple(sorted(bench.DTYPES))
    assert (command.DEFAULT_WARMUP, command.DEFAULT_ITERS) == (defaults.warmup, defaults.iters)
    assert tuple(command.DEFAULT_SIZES) == defaults.sizes
    assert (command.DEFAULT_BACKBONE, command.DEFAULT_WIDTH, command.DEFAULT_PEER_CLASSES) == (
        defaults.backbone, defaults.width, defaults.peer_classes)
    assert command.DEFAULT_BACKEND is defaults.backend is None  # None: what srn detect runs on that device
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    assert config_from_args(parser.parse_args([])).backend is None


def test_a_share_of_the_yardstick_above_one_is_never_printed_as_a_share(results):
    # A GPU run reports the share of its bf16 matmul rate; one above 1 says the yardstick was low.
    fake = json.loads(json.dumps(results))
    fake["matmul"] = {"dtype": "bf16", "n": 128, "tflops": 0.001}
    for entry in (fake["srn"], fake["peer"]):
        entry["matmul_share"] = {"64x64": 1.669}
        entry["throughput"]["matmul_share"] = 0.25
    table = format_table(fake)
    assert "166.9%" not in table and "above it" in table and "25.0%" in table
    assert not re.search(r"\b(1\d\d|[2-9]\d\d)\.\d%", table)
