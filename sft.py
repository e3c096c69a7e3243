"""
sft.py - supervised fine-tuning on packed sequences (InternLM-Law two-stage recipe), FSDP2, one readable file.

    torchrun --nproc_per_node 8 sft.py --model Qwen2.5-7B --data out/stage1 --output_dir runs/stage1
    torchrun --nproc_per_node 8 sft.py --model Qwen2.5-7B --init_from runs/stage1/final --data out/stage2 \
        --output_dir runs/stage2

Reads a packed stage written by prepare_data.py (input_ids / labels / position_ids / cu_seqlens / cu_offsets .npy +
meta.json), trains with the loss summed over assistant tokens and divided by the GLOBAL number of supervised tokens of
the optimizer step (so micro-batch size, gradient accumulation and world size do not change the update), and writes
OUT/metrics.jsonl, OUT/config.json, OUT/checkpoints/step_N (DCP, atomic, last K kept) and OUT/final/ (a Hugging Face
folder). Plain `python sft.py ...` runs as a world of one; on CPU everything runs over gloo.

Sections: 1. config  2. data  3. model  4. training step  5. main loop
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import utils
from utils import IGNORE_INDEX, DataError, print0


# ----------------------------------------------------------------------------------------------------------------------
# 1. Config (every field is a --flag)
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class SFTConfig:
    """Supervised fine-tuning on a packed stage (FSDP2, packed attention, exact resume)."""
    model: str = field(metadata={"help": "Hugging Face causal-LM folder (architecture + tokenizer)"})
    data: str = field(metadata={"help": "packed stage folder written by prepare_data.py"})
    output_dir: str = field(metadata={"help": "run folder: metrics.jsonl, checkpoints/, final/"})
    init_from: str | None = field(default=None, metadata={"help": "start from these weights (stage 2: stage 1's final/)"})
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate (paper: 1e-5)", "gt": 0})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decays to lr * this", "min": 0, "max": 1})
    warmup_ratio: float = field(default=0.03, metadata={"help": "fraction of steps with linear warmup", "min": 0,
                                                        "max": 1})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (matrices only, not norms/biases)",
                                                       "min": 0})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 (first-moment decay)", "min": 0, "max": 0.9999})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (second-moment decay)", "min": 0, "max": 0.9999})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (total L2 norm)", "gt": 0})
    num_epochs: int = field(default=1, metadata={"help": "passes over the packs (paper: 1)", "min": 1})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps", "min": 1})
    micro_batch_size: int = field(default=1, metadata={"help": "packs per forward pass per rank", "min": 1})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step per rank", "min": 1})
    seed: int = field(default=0, metadata={"help": "pack order and initialisation seed", "min": 0})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only the final export)",
                                                 "min": 0})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept", "min": 1})
    resume: str | None = field(default=None, metadata={"help": "'auto': continue from the newest checkpoint",
                                                       "choices": ("auto",)})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute each block in backward"})
    cpu_offload: bool = field(default=False, metadata={"help": "FSDP2 CPU offload of params/grads/optimizer"})
    hybrid_shard: bool = field(default=False, metadata={"help": "shard inside a node, replicate across nodes"})
    attention: str = field(default="auto", metadata={"help": "packed attention kernel (auto: flash > torch_varlen on "
                                                             "GPU, exact on CPU)",
                                                     "choices": ("auto", "flash", "torch_varlen", "exact")})
    loss_chunk: int = field(default=4096, metadata={"help": "tokens per cross-entropy chunk", "min": 1})
    export_dtype: str = field(default="auto", metadata={"help": "final/ weights (auto: bfloat16 on GPU, float32 on "
                                                                "CPU)", "choices": ("auto", "bfloat16", "float32")})
    peak_tflops: float | None = field(default=None, metadata={"help": "per-device peak for MFU (auto on H100/A100)",
                                                              "gt": 0})


def preflight(cfg: SFTConfig) -> None:
    """Every flag, folder and file checked before anything is loaded or written (DataError, one line)."""
    utils.check_fields(cfg)
    if cfg.attention in ("flash", "torch_varlen") and not torch.cuda.is_available():
        raise DataError("--attention", None, None, f"{cfg.attention} needs CUDA (use auto or exact)", reason="bad_flag")
    utils.check_out_dir(cfg.output_dir, "--output_dir")
    PackedStage(cfg.data)  # meta.json and the arrays: present, shapes consistent (memory-mapped, nothing read)
    utils.check_model_dir(cfg.model, "--model", weights=cfg.init_from is None)
    if cfg.init_from is not None:
        utils.check_model_dir(cfg.init_from, "--init_from", tokenizer=False)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Data: a packed stage (see PACKED_FORMAT in the README), memory-mapped
# ----------------------------------------------------------------------------------------------------------------------

class PackedStage:
    """The packs of one stage. batch(indices) -> one flat micro-batch of len(indices) packs laid end to end."""

    FILES = ("input_ids", "labels", "position_ids", "cu_seqlens", "cu_offsets")

    def __init__(self, path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DataError(meta_path, None, None, "file not found (is --data a packed stage folder?)", "missing_file")
        self.meta = json.loads(utils.read_text(meta_path))
        for f in self.FILES:
            p = self.path / f"{f}.npy"
            if not p.is_file():
                raise DataError(p, None, None, "file not found", "missing_file")
            setattr(self, f, np.load(p, mmap_mode="r"))
        self.n, self.seq_len = self.input_ids.shape
        for f in ("labels", "position_ids"):
            if getattr(self, f).shape != self.input_ids.shape:
                raise DataError(self.path / f"{f}.npy", None, None,
                                f"shape {getattr(self, f).shape} != input_ids {self.input_ids.shape}", "bad_shape")
        if len(self.cu_offsets) != self.n + 1:
            raise DataError(self.path / "cu_offsets.npy", None, None, f"expected {self.n + 1} entries", "bad_shape")
        if int(self.meta.get("seq_len", self.seq_len)) != self.seq_len:
            raise DataError(meta_path, None, "seq_len", f"{self.meta['seq_len']} != arrays' {self.seq_len}")

    def cu(self, i: int) -> list[int]:
        return [int(x) for x in self.cu_seqlens[self.cu_offsets[i]:self.cu_offsets[i + 1]]]

    def batch(self, indices) -> dict:
        """-> input_ids / position_ids / targets [1, B*seq_len] (int64), cu_seqlens (python ints, pads included),
        sample_lengths (real samples only), n_tokens (real), n_supervised."""
        idx = [int(i) for i in indices]
        ids = torch.from_numpy(np.stack([self.input_ids[i] for i in idx]).astype(np.int64))
        labels = torch.from_numpy(np.stack([self.labels[i] for i in idx]).astype(np.int64))
        pos = torch.from_numpy(np.stack([self.position_ids[i] for i in idx]).astype(np.int64))
        cus = [self.cu(i) for i in idx]
        targets = utils.shift_labels_packed(labels, pos)
        lengths = [b - a for cu in cus for a, b in zip(cu[:-1], cu[1:])]
        return {"input_ids": ids.reshape(1, -1), "position_ids": pos.reshape(1, -1), "targets": targets.reshape(1, -1),
                "cu_seqlens": utils.packed_boundaries(cus, self.seq_len), "sample_lengths": lengths,
                "n_tokens": sum(cu[-1] for cu in cus), "n_supervised": int((targets != IGNORE_INDEX).sum())}


def pack_order(n_packs: int, packs_per_step: int, num_epochs: int, seed: int) -> np.ndarray:
    """Global pack order: one seeded permutation per epoch, each epoch cut to whole steps. -> [steps, packs_per_step]"""
    steps_per_epoch = n_packs // packs_per_step
    rows = []
    for epoch in range(num_epochs):
        perm = np.random.default_rng(seed + epoch).permutation(n_packs)
        rows.append(perm[:steps_per_epoch * packs_per_step].reshape(steps_per_epoch, packs_per_step))
    return np.concatenate(rows)


# ----------------------------------------------------------------------------------------------------------------------
# 3. Model: the HF causal LM with packed attention, plus the chunked loss inside the FSDP root's forward
# ----------------------------------------------------------------------------------------------------------------------

class PackedCausalLM(nn.Module):
    """Wraps a Hugging Face causal LM: forward(batch) -> summed cross-entropy over supervised tokens.

    The loss is computed here (in the FSDP root's forward, where lm_head's weight is gathered) in chunks, so the full
    [tokens x vocab] logits never exist."""

    def __init__(self, hf_model, backend: str = "exact", loss_chunk: int = 4096):
        super().__init__()
        self.hf, self.backend, self.loss_chunk = hf_model, backend, loss_chunk

    def forward(self, input_ids, position_ids, targets, cu_seqlens: list[int]):
        cu_t = torch.tensor(cu_seqlens, dtype=torch.int32, device=input_ids.device)
        max_len = max(b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]))
        hidden = self.hf.model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                               lexlab_cu_seqlens=cu_seqlens, lexlab_cu_seqlens_t=cu_t, lexlab_max_seqlen=max_len,
                               lexlab_backend=self.backend).last_hidden_state
        return utils.chunked_cross_entropy_sum(hidden[0], self.hf.lm_head.weight, targets[0], self.loss_chunk)


def load_model(cfg: SFTConfig, device):
    from transformers import AutoModelForCausalLM
    utils.register_packed_attention()
    src = cfg.init_from or cfg.model
    if not (Path(src) / "config.json").is_file():
        raise DataError(Path(src) / "config.json", None, None, "file not found (not a Hugging Face model folder)",
                        "missing_file")
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation=utils.PACKED_ATTENTION)
    backend = utils.pick_attention_backend(device) if cfg.attention == "auto" else cfg.attention
    model = PackedCausalLM(hf, backend, cfg.loss_chunk)
    if device.type == "cuda":
        model.to(device)
    utils.shard_model(model, device, cfg.hybrid_shard, cfg.cpu_offload, cfg.activation_checkpointing)
    return model, hf, backend


def build_optimizer(model, cfg: SFTConfig, device):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


# ----------------------------------------------------------------------------------------------------------------------
# 4. One optimizer step
# ----------------------------------------------------------------------------------------------------------------------

def train_step(model, optimizer, data: PackedStage, step_packs, cfg: SFTConfig, rank: int, world: int, device,
               step: int) -> dict:
    """Forward/backward over this rank's micro-batches of the step's packs, then clip and (if finite) step.

    step_packs: the global pack indices of this step [world * grad_accum * micro_batch_size]; rank r takes the r-th
    contiguous slice. Loss = sum of CE over the step's supervised tokens (all ranks) / their global count; each
    rank backpropagates its part times `world`, because FSDP averages (divides by world) when it reduces gradients."""
    per_rank = cfg.grad_accum * cfg.micro_batch_size
    mine = step_packs[rank * per_rank:(rank + 1) * per_rank]
    batches = [data.batch(mine[m * cfg.micro_batch_size:(m + 1) * cfg.micro_batch_size]) for m in range(cfg.grad_accum)]
    counts = torch.tensor([sum(b["n_supervised"] for b in batches), sum(b["n_tokens"] for b in batches),
                           sum(L * L for b in batches for L in b["sample_lengths"])], dtype=torch.float64, device=device)
    dist.all_reduce(counts)
    n_sup = max(1.0, counts[0].item())
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for m, b in enumerate(batches):
        model.set_requires_gradient_sync(m == len(batches) - 1)  # reduce-scatter once, after the last micro-batch
        ce = model(b["input_ids"].to(device), b["position_ids"].to(device), b["targets"].to(device), b["cu_seqlens"])
        (ce * (world / n_sup)).backward()
        loss_sum += ce.detach().double()
    dist.all_reduce(loss_sum)
    loss = loss_sum.item() / n_sup
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise FloatingPointError(f"step {step}: non-finite loss ({loss}) or gradient norm ({grad_norm}); stopping "
                                 f"before the optimizer step. The last good checkpoint is kept; lower --lr or check "
                                 f"the data/weights.")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss, "grad_norm": grad_norm, "n_tokens": counts[1].item(), "sum_len_sq": counts[2].item()}


# ----------------------------------------------------------------------------------------------------------------------
# 5. Main loop
# ----------------------------------------------------------------------------------------------------------------------

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0}  # dense bf16


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # peak RSS (KiB on Linux)


def main(argv=None):
    cfg = utils.parse_config(SFTConfig, argv)
    try:
        preflight(cfg)
    except DataError as e:
        utils.fail("sft.py", e)
    rank, _, world, device = utils.dist_init(cfg.seed)
    try:
        run(cfg, rank, world, device)
    except DataError as e:
        utils.fail("sft.py", e)
    except FloatingPointError as e:  # not bad input: the run diverged (exit 1)
        print(f"sft.py: error: {e}", flush=True)
        raise SystemExit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(cfg: SFTConfig, rank: int, world: int, device):
    from tqdm import tqdm
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    data = PackedStage(cfg.data)
    packs_per_step = world * cfg.grad_accum * cfg.micro_batch_size
    if data.n < packs_per_step:
        raise DataError(cfg.data, None, None, f"{data.n} packs < {packs_per_step} needed for one step "
                        f"(world {world} x grad_accum {cfg.grad_accum} x micro_batch_size {cfg.micro_batch_size})")
    order = pack_order(data.n, packs_per_step, cfg.num_epochs, cfg.seed)
    total_steps = len(order) if cfg.max_steps is None else min(cfg.max_steps, len(order))
    warmup = max(1, int(cfg.warmup_ratio * total_steps))

    model, hf, backend = load_model(cfg, device)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: utils.lr_at(s, total_steps, warmup, cfg.min_lr_ratio))
    if rank == 0:
        utils.save_config(cfg, out)
    n_params = sum(p.numel() for p in hf.parameters())  # DTensor numel = global size
    hc = hf.config
    attn_dim = hc.num_attention_heads * (getattr(hc, "head_dim", None) or hc.hidden_size // hc.num_attention_heads)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = cfg.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)

    start = 0
    if cfg.resume == "auto" and (last := utils.latest_checkpoint(ckpt_root)) is not None:
        extra = utils.load_checkpoint(last, model, optimizer)
        scheduler.load_state_dict(extra["scheduler"])
        start = extra["step"]
        print0(f"resumed from {last} (step {start})")
    metrics_path = out / "metrics.jsonl"
    if rank == 0:  # keep the history up to the resume point only
        old = metrics_path.read_text().splitlines() if start and metrics_path.is_file() else []
        metrics_path.write_text("".join(l + "\n" for l in old if json.loads(l)["step"] <= start))
    print0(f"sft: {data.n} packs x {data.seq_len} tokens, {total_steps} steps of {packs_per_step} packs, world {world},"
           f" attention={backend}, device={device.type}")

    kill_at = os.environ.get("LEXLAB_TEST_KILL_AT_STEP")  # test hook: SIGKILL after this step
    bar = tqdm(range(start, total_steps), disable=rank != 0, desc="sft", initial=start, total=total_steps)
    for step in bar:
        t0 = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        r = train_step(model, optimizer, data, order[step], cfg, rank, world, device, step)
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        flops = utils.train_flops(n_params, r["n_tokens"], r["sum_len_sq"], hc.num_hidden_layers, attn_dim)
        mfu = flops / dt / (world * peak * 1e12) if peak else None  # the step's global FLOPs over all devices' peak
        row = {"step": step + 1, "loss": r["loss"], "grad_norm": r["grad_norm"], "lr": lr,
               "tokens_per_s": r["n_tokens"] / dt, "mfu": mfu, "peak_mem_gb": peak_memory_gb(device),
               "time_s": dt, "n_tokens": r["n_tokens"], "sum_len_sq": r["sum_len_sq"]}
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix(loss=f"{r['loss']:.4f}", gn=f"{r['grad_norm']:.2f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
            utils.save_checkpoint(ckpt_root, step + 1, model, optimizer,
                                  {"step": step + 1, "scheduler": scheduler.state_dict(),
                                   "config": dataclasses.asdict(cfg)}, cfg.keep_last)
        if kill_at == str(step + 1):
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()

    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else None, "bfloat16": torch.bfloat16,
             "float32": torch.float32}[cfg.export_dtype]
    utils.export_hf(model, hf, cfg.model, out / "final", dtype=dtype, prefix="hf.")
    print0(f"exported {out / 'final'}")


if __name__ == "__main__":
    main()
