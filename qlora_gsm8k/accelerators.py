"""Optional GPU speed-ups of training: Liger's Triton kernels, torch.compile of the decoder layers, and what
train.cuda_graphs needs of the machine (the graphs themselves: step_graphs.py)."""

from __future__ import annotations

import importlib.util

import torch

from .errors import UserError
from .modeling import device
from .train_config import TrainConfig

# Liger's RoPE kernel is left out: on an H200 it cost about 1.8 ms of CPU per call (bench/results/run2,
# profile.txt) and the run without it was faster (14.4k vs 13.2k tokens/s, same run).
LIGER_KERNELS = {"rope": False}
# With train.compile, only Liger's fused loss (outside the compiled layers) is kept: its RMSNorm kernel cannot be
# traced and split every compiled layer in three, and Inductor fuses RMSNorm and SwiGLU itself (H200, run 8:
# 29,081 tokens/s against 23,259 with Liger's other kernels too, same run).
LIGER_KERNELS_COMPILED = {"rope": False, "rms_norm": False, "swiglu": False}


def liger_kernel_enabled(cfg: TrainConfig) -> bool:
    """Whether Liger's kernels are used: they are Triton kernels, so a CUDA GPU and liger-kernel are needed."""
    if cfg.liger_kernel is False:
        return False
    on_gpu = device().type == "cuda"
    installed = importlib.util.find_spec("liger_kernel") is not None
    if cfg.liger_kernel is True and not (on_gpu and installed):
        missing = "a CUDA GPU (its kernels are Triton)" if not on_gpu else "liger-kernel: pip install liger-kernel"
        raise UserError(f"train.liger_kernel is true but needs {missing}; or set -S train.liger_kernel=auto")
    return on_gpu and installed


def compile_enabled(cfg: TrainConfig) -> bool:
    """Whether decoder layers are compiled; refused off CUDA, where bitsandbytes repacks 4-bit weights on their
    first CPU forward and a graph traced before that fails."""
    if cfg.compile and device().type != "cuda":
        raise UserError("train.compile is true but needs a CUDA GPU; set -S train.compile=false")
    return cfg.compile


def cuda_graphs_possible(cfg: TrainConfig) -> bool:
    """Whether train.cuda_graphs may record graphs on this machine (a CUDA GPU); true without one is refused. The
    run's other conditions (its length, method, precision) are step_graphs.graphed_steps_for's."""
    on_gpu = device().type == "cuda"
    if cfg.cuda_graphs is True and not on_gpu:
        raise UserError("train.cuda_graphs is true but it needs a CUDA GPU; set -S train.cuda_graphs=auto")
    return cfg.cuda_graphs is not False and on_gpu


def compile_decoder_layers(model, mode: str | None = None) -> int:
    """torch.compile every decoder layer in place; returns how many. The layers share one compiled graph
    (same code, parameters passed as inputs), so a 22-layer model compiles once per input shape, not 22 times;
    the embedding, lm_head and loss stay eager (Liger's fused loss runs there)."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) and _is_decoder_layer(m[0])]
    if not layers:
        raise UserError("train.compile: no decoder layers found in this model")
    for layer in layers[0]:
        layer.compile(mode=mode)
    return len(layers[0])


def compile_whole_forward(model, mode: str | None = None) -> None:
    """torch.compile the whole causal LM under the adapter (embedding, every layer, lm_head, loss) in place: one
    graph per input shape instead of one per layer call, so mode="reduce-overhead" can replay the whole forward
    and backward as CUDA graphs."""
    model.get_base_model().compile(mode=mode)


def _is_decoder_layer(module) -> bool:
    return type(module).__name__.endswith("DecoderLayer")
