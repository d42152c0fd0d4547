from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"

# Freshly initialised heads produce denormal floats, which are many times slower on CPUs.
torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (the project's shared data folder)")
    return SHARED


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory) -> str:
    """A tiny random ResNet-18 SRN checkpoint ("scaled" init keeps its scores distinct: N(0, 0.01)
    makes them all tie), for command-line tests that need a fast detector, not a good one."""
    from srn.config import DetectorConfig, ModelConfig
    from srn.model import build_model
    from srn.weights import save_checkpoint

    torch.manual_seed(0)
    config = DetectorConfig(model=ModelConfig(backbone="resnet18", width=32, init="scaled"))
    path = tmp_path_factory.mktemp("w") / "small.pt"
    save_checkpoint(build_model(config.model).eval(), config, path)
    return str(path)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a shared CPU, OpenMP barriers that wait on a busy core make
    small convolutions up to 100x slower with 2 threads than with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
