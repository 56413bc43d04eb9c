"""LoRA dropout that keeps a one-byte mask per input element instead of a dropped copy of the input.

peft computes an adapted layer as base(x) + lora_B(lora_A(dropout(x))). For the backward pass autograd keeps the
dropout's mask and its output (the input lora_A's weight gradient needs): under bf16 autocast three bytes per input
element of each adapted layer, on top of x, which the frozen 4-bit layer keeps anyway. With all seven linear layers
adapted that is about half of what a training step keeps per token. Here dropout and lora_A are one autograd
function that keeps x (the very tensor the base layer keeps: no new memory) and the mask, and drops the input again
in the backward pass. The mask comes from `torch.native_dropout`, the kernel `nn.Dropout` runs on a GPU, so the
masks drawn are the same as peft's; the gradients, given the mask, are the same arithmetic."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _DropoutThenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        device_type = x.device.type
        # The dtype autocast would run lora_A's matmul in: the step's own (bf16 on a GPU), else the weight's.
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        with torch.autocast(device_type, enabled=False):
            dropped, keep = torch.native_dropout(x.to(dtype), p, True)
            out = F.linear(dropped, weight.to(dtype))
        ctx.save_for_backward(x, keep, weight)
        ctx.p, ctx.dtype = p, dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, keep, weight = ctx.saved_tensors
        scale = 1.0 / (1.0 - ctx.p)
        grad_out = grad_out.to(ctx.dtype)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_dropout_backward(grad_out @ weight.to(ctx.dtype), keep, scale).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dropped = torch.ops.aten.native_dropout_backward(x.to(ctx.dtype), keep, scale)
            grad_weight = (grad_out.reshape(-1, grad_out.shape[-1]).T @ dropped.reshape(-1, dropped.shape[-1])).to(
                weight.dtype
            )
        return grad_x, grad_weight, None


class DropoutThenLinear(nn.Linear):
    """lora_A with the adapter's dropout inside it: the same weight (same name in the state dict, so saving,
    loading and merging see a plain LoRA adapter), dropout applied only while training."""

    def __init__(self, linear: nn.Linear, p: float):
        nn.Module.__init__(self)
        if linear.bias is not None:
            raise ValueError("LoRA's A matrix has no bias")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", None)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0:
            return _DropoutThenLinear.apply(x, self.weight, self.p)
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


def fuse_lora_dropout(model) -> int:
    """Move each plain LoRA layer's dropout into its lora_A (DoRA and other variants keep peft's own path).
    Returns how many adapters were changed."""
    from peft.tuners.lora import LoraLayer

    fused = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name, dropout in list(module.lora_dropout.items()):
            if name not in module.lora_A or name in getattr(module, "lora_variant", {}):
                continue
            if isinstance(dropout, nn.Dropout) and dropout.p > 0 and type(module.lora_A[name]) is nn.Linear:
                module.lora_A[name] = DropoutThenLinear(module.lora_A[name], dropout.p)
                module.lora_dropout[name] = nn.Identity()
                fused += 1
    return fused
