"""Training steps replayed as CUDA graphs (train.cuda_graphs; issue 27).

A QLoRA step of a small model on a large GPU is bound by launching ~3,000 small kernels from Python, not by the
GPU's arithmetic (bench/RESULTS.md run 13: GPU busy 39%). Recording a step's forward, loss and backward once as a
CUDA graph and replaying it costs one launch. A graph needs fixed shapes and fixed memory, so:
- batches are padded to a few bucket lengths (multiples of SHAPE_BUCKET tokens) and always to micro_batch_size
  rows, one graph recorded per bucket, all graphs sharing one memory pool (only one runs at a time);
- no attention mask: rows are right-padded, so under causal attention no real token sees a pad, and pads carry
  no label; the loss and every gradient are those of the padded batch with its mask;
- the LM head and loss run chunk by chunk (lm_head_cross_entropy), so the [tokens, vocab] logits never exist
  whole and nothing syncs with the host;
- gradients land in persistent buffers that become the parameters' .grad, so clipping, the optimizer and
  gradient accumulation work as the HF Trainer does them, outside the graph.
Off CUDA the same step runs eagerly (record=False), which is how tests check it against the HF loss."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .accelerators import cuda_graphs_possible
from .prompts import IGNORE_INDEX, Encoded, pad_batch

SHAPE_BUCKET = 128  # tokens; 512-token rows give at most 4 recorded graphs
LOSS_CHUNK_TOKENS = 4096  # logits of 4,096 tokens x 49k vocab in float32: 0.8 GB at a time
WARMUP_STEPS = 2  # eager runs on a side stream before recording (cuBLAS handles, Triton autotuning)
# train.cuda_graphs=auto records graphs only for runs of at least this many micro-batches: recording a shape costs
# about three eager steps, repaid over the steps that replay it (H200, bench/PEERS.md run 2: 0.94x ours at 63
# steps and 1.03x at 234 on the TinyLlama architecture; 2.40x at 234 and 2.37x at 702 on SmolLM2-135M).
MIN_MICRO_BATCHES = 200
REPLAYS_TIMED = 1000


class StaticShapeCollator:
    """Right-padded batches of exactly `rows` rows and a length a multiple of `bucket`; no attention mask (see the
    module doc): rows added to fill the batch are all padding, with no label."""

    def __init__(self, pad_token_id: int, rows: int, bucket: int = SHAPE_BUCKET):
        self.pad_token_id, self.rows, self.bucket = pad_token_id, rows, bucket

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if len(rows) > self.rows:
            raise ValueError(f"a batch of {len(rows)} rows for graphs of {self.rows}")
        encoded = [Encoded(input_ids=r["input_ids"], labels=r["labels"]) for r in rows]
        batch = pad_batch(encoded, self.pad_token_id, multiple=self.bucket)
        fill = self.rows - len(rows)
        input_ids = F.pad(batch["input_ids"], (0, 0, 0, fill), value=self.pad_token_id)
        labels = F.pad(batch["labels"], (0, 0, 0, fill), value=IGNORE_INDEX)
        return {"input_ids": input_ids, "labels": labels}


class _LMHeadCrossEntropy(torch.autograd.Function):
    """scale × the summed cross-entropy of hidden @ weight.T against labels (IGNORE_INDEX ignored). The gradient for
    hidden is computed in the forward pass, chunk by chunk, so only one chunk's logits exist at a time (what
    Liger's fused linear cross-entropy does, without its host sync). The head's weight is frozen: no gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, scale, chunk_tokens):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, y = hidden[start : start + chunk_tokens], labels[start : start + chunk_tokens]
            # As transformers' loss: logits in the compute dtype, log-softmax in float32.
            log_probs = torch.log_softmax((h @ weight.t()).float(), dim=-1)
            valid = (y != IGNORE_INDEX).unsqueeze(1)
            target = torch.where(valid.squeeze(1), y, 0).unsqueeze(1)
            total = total - (log_probs.gather(1, target) * valid).sum()
            grad_logits = log_probs.exp_().scatter_add_(1, target, torch.full_like(target, -1, dtype=torch.float32))
            grad_logits.mul_(valid * scale)
            grad_hidden[start : start + chunk_tokens] = grad_logits.to(weight.dtype) @ weight
        ctx.save_for_backward(grad_hidden)
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_output.to(grad_hidden.dtype), None, None, None, None


def lm_head_cross_entropy(hidden, weight, labels, scale, chunk_tokens: int = LOSS_CHUNK_TOKENS):
    """Causal-LM loss from the decoder's last hidden states [batch, length, dim]: position t predicts token t+1."""
    dim = hidden.shape[-1]
    shifted = hidden[:, :-1].reshape(-1, dim)
    targets = labels[:, 1:].reshape(-1)
    return _LMHeadCrossEntropy.apply(shifted, weight, targets, scale, chunk_tokens)


def graph_blocker(model, compute_dtype: torch.dtype, num_processes: int, gradient_checkpointing: bool) -> str | None:
    """Why this run's steps cannot take the graph path, on any device (None: they can). `model`: the PEFT model."""
    if num_processes > 1:
        return "it runs on one GPU only (train.num_gpus > 1)"
    if gradient_checkpointing and torch.__version__ < (2, 10):
        # Checkpointing rewinds the CUDA RNG to recompute a layer; a graph may record that from torch 2.10 on
        # (pytorch/pytorch#162505); not yet run on a GPU here.
        return f"train.gradient_checkpointing inside a graph needs torch 2.10 or later (this is {torch.__version__})"
    if compute_dtype == torch.float16:
        return "float16 training needs a loss scaler; graphs run in bfloat16 or float32"
    if getattr(model, "peft_config", None) and model.active_peft_config.is_prompt_learning:
        return "prompt and prefix tuning add virtual tokens in PEFT's own forward"
    base = model.get_base_model()
    head = base.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None or head.weight.requires_grad:
        return "the model's LM head is not a frozen linear layer without bias"
    config = base.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return f"{config.model_type} scales its logits; the chunked loss assumes plain ones"
    return None


@dataclass
class _Recorded:
    graph: torch.cuda.CUDAGraph | None
    input_ids: torch.Tensor
    labels: torch.Tensor
    scale: torch.Tensor
    loss: torch.Tensor | None = None


class GraphedSteps:
    """Forward, loss and backward of a PEFT causal LM as one call per batch shape: recorded as a CUDA graph the
    first time a shape comes (record=True), replayed after. Gradients are added to the trainable parameters'
    .grad (persistent buffers, zeroed when the Trainer has set .grad to None), like loss.backward() would."""

    def __init__(self, model, autocast_dtype: torch.dtype | None, record: bool = True, required: bool = False):
        self.model = model
        self.base = model.get_base_model()
        self.decoder = self.base.get_decoder()
        self.head_weight = self.base.get_output_embeddings().weight
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.autocast_dtype = autocast_dtype
        self.record = record
        self.required = required  # train.cuda_graphs=true: a step that cannot be recorded is an error, not a fallback
        self.grads: list[torch.Tensor] | None = None
        self.shapes: dict[tuple[int, int], _Recorded] = {}
        self.pool = torch.cuda.graph_pool_handle() if record else None
        # The last replays' timing events: enough for a stable median, bounded however long the run.
        self.replays: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque(maxlen=REPLAYS_TIMED)

    def _forward_backward(self, entry: _Recorded) -> torch.Tensor:
        device_type = entry.input_ids.device.type
        autocast = torch.autocast(
            device_type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
            cache_enabled=False,  # a cached cast would be recorded once and never see the updated weights
        )
        with autocast:
            hidden = self.decoder(input_ids=entry.input_ids, use_cache=False).last_hidden_state
            loss = lm_head_cross_entropy(hidden, self.head_weight, entry.labels, entry.scale)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        torch._foreach_add_(
            self.grads, [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params, strict=True)]
        )
        return loss.detach()

    def _prepare(self, input_ids: torch.Tensor, labels: torch.Tensor) -> _Recorded:
        shape = tuple(input_ids.shape)
        if shape in self.shapes:
            return self.shapes[shape]
        scale = torch.ones((), dtype=torch.float32, device=input_ids.device)
        entry = _Recorded(None, input_ids.clone(), labels.clone(), scale)
        if self.record:
            saved = [g.clone() for g in self.grads]
            try:
                self._record(entry)
                print(f"recorded a CUDA graph for batches of {shape[0]} x {shape[1]} tokens ({len(self.shapes) + 1})")
            except Exception as error:  # a host sync or a kernel a graph cannot hold, in some model's forward
                entry.graph = entry.loss = None
                self._cannot_record(error)
            finally:
                torch._foreach_copy_(self.grads, saved)  # the warm-up steps' gradients are not the batch's
        self.shapes[shape] = entry
        return entry

    def _record(self, entry: _Recorded) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._forward_backward(entry)
        torch.cuda.current_stream().wait_stream(side)
        entry.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(entry.graph, pool=self.pool):
            entry.loss = self._forward_backward(entry)

    def _cannot_record(self, error: Exception) -> None:
        """train.cuda_graphs=true: refused with the reason; auto: one line, and every later step runs eagerly (the
        shapes recorded before still replay)."""
        from .errors import UserError

        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        if self.required:
            raise UserError(
                f"train.cuda_graphs is true but recording a training step as a CUDA graph failed ({reason}); "
                "set -S train.cuda_graphs=auto to train eagerly"
            ) from error
        print(f"train.cuda_graphs=auto: recording a CUDA graph failed ({reason}); training steps run eagerly from here")
        self.record = False

    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """Adds the gradient of scale × (summed token loss) to .grad; returns that scaled loss."""
        if self.grads is None:
            self.grads = [torch.zeros_like(p) for p in self.params]
        if any(p.grad is not b for p, b in zip(self.params, self.grads, strict=True)):
            # The Trainer's zero_grad set .grad to None: a new accumulation starts in the same buffers.
            torch._foreach_zero_(self.grads)
            for p, b in zip(self.params, self.grads, strict=True):
                p.grad = b
        entry = self._prepare(input_ids, labels)
        entry.input_ids.copy_(input_ids)
        entry.labels.copy_(labels)
        entry.scale.copy_(scale if torch.is_tensor(scale) else torch.tensor(scale))
        if entry.graph is None:
            return self._forward_backward(entry)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        entry.graph.replay()
        end.record()
        self.replays.append((start, end))
        return entry.loss.clone()

    def replay_ms(self) -> float | None:
        """Median GPU time of one replayed step (forward, loss, backward), beside the whole step's wall time: what
        is left outside the graph (optimizer, clipping, the Trainer's Python) is the difference."""
        if not self.replays:
            return None
        torch.cuda.synchronize()
        times = sorted(start.elapsed_time(end) for start, end in list(self.replays)[1:] or self.replays)
        return times[len(times) // 2]


def graphed_steps_for(
    model, cfg, compute_dtype: torch.dtype, compiled: bool, micro_batches: int, record: bool = True
) -> GraphedSteps | None:
    """The run's GraphedSteps, or None with one line saying why its steps run eagerly (train.cuda_graphs=auto);
    train.cuda_graphs=true refuses instead (but records for runs of any length). `cfg`: the TrainConfig;
    `micro_batches`: how many this process runs. record=False: the graph path's arithmetic without recording, on
    any device (how CPU tests run it through the Trainer)."""
    from .errors import UserError

    if cfg.cuda_graphs is False:
        return None
    blocker = "it needs a CUDA GPU" if record and not cuda_graphs_possible(cfg) else None
    if blocker is None and cfg.cuda_graphs == "auto" and micro_batches < MIN_MICRO_BATCHES:
        print(
            f"train.cuda_graphs=auto: training steps run eagerly: {micro_batches} micro-batches are too few to repay "
            f"recording CUDA graphs (auto records from {MIN_MICRO_BATCHES}; true records anyway)"
        )
        return None
    if blocker is None and cfg.cuda_graphs == "auto" and cfg.gradient_checkpointing:
        print(
            "train.cuda_graphs=auto: training steps run eagerly: graphs with train.gradient_checkpointing are not "
            "measured yet (train.cuda_graphs=true records them)"
        )
        return None
    blocker = blocker or ("train.compile compiles the layers instead" if compiled else None)
    blocker = blocker or graph_blocker(model, compute_dtype, cfg.num_gpus, cfg.gradient_checkpointing)
    if blocker is None:
        autocast = compute_dtype if compute_dtype != torch.float32 else None
        return GraphedSteps(model, autocast, record, required=cfg.cuda_graphs is True)
    if cfg.cuda_graphs is True:
        raise UserError(f"train.cuda_graphs is true but {blocker}; set -S train.cuda_graphs=auto")
    print(f"train.cuda_graphs=auto: training steps run eagerly, not as CUDA graphs: {blocker}")
    return None
