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
import sys
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
    data: str | None = field(default=None, metadata={"help": "packed stage folder written by prepare_data.py "
                                                             "(required, except with --dry_run)"})
    output_dir: str | None = field(default=None, metadata={"help": "run folder: metrics.jsonl, checkpoints/, final/ "
                                                                   "(required, except with --dry_run)"})
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
    resume: str | None = field(default=None, metadata={"help": "'auto': continue the run in OUTPUT_DIR from its newest "
                                                                 "checkpoint (same config only, see RUN_SETTINGS)",
                                                       "choices": ("auto",)})
    overwrite: bool = field(default=False, metadata={"help": "OUTPUT_DIR holds a run: delete it and start clean"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute each block in backward"})
    reduce_every_micro_batch: bool = field(default=True, metadata={
        "help": "reduce-scatter gradients after every micro-batch (sharded accumulation, as torchtitan); false: "
                "reduce once per step, FSDP2 then holds full-size fp32 gradients between micro-batches (4 bytes x "
                "params per GPU: 30 GB for 7B) - only for small models on slow interconnects"})
    cpu_offload: bool = field(default=False, metadata={"help": "FSDP2 CPU offload of params/grads/optimizer"})
    hybrid_shard: bool = field(default=False, metadata={"help": "shard inside a node, replicate across nodes"})
    attention: str = field(default="auto", metadata={"help": "packed attention kernel (auto: flash > torch_varlen on "
                                                             "GPU, exact on CPU)",
                                                     "choices": ("auto", "flash", "torch_varlen", "exact")})
    loss_chunk: int = field(default=4096, metadata={"help": "tokens per cross-entropy chunk", "min": 1})
    export_dtype: str = field(default="auto", metadata={"help": "final/ weights (auto: bfloat16 on GPU, float32 on "
                                                                "CPU)", "choices": ("auto", "bfloat16", "float32")})
    peak_tflops: float | None = field(default=None, metadata={
        "help": "per-device dense bf16 peak for MFU (default: the datasheet's, utils.PEAK_TFLOPS)", "gt": 0})
    dry_run: bool = field(default=False, metadata={
        "help": "print the memory plan per GPU (needs only --model's config.json; no weights, no data) and exit"})
    world_size: int | None = field(default=None, metadata={"help": "dry_run: GPUs (default: $WORLD_SIZE or 1)",
                                                           "min": 1})
    seq_len: int | None = field(default=None, metadata={"help": "dry_run: tokens per pack (default: --data's, else "
                                                                "32768)", "min": 1})
    gpu_memory_gb: float = field(default=80.0, metadata={"help": "dry_run: memory of one GPU, GiB", "min": 0})


# How a run runs, not what it computes: the only fields that may change on --resume auto. Every other field (model,
# init_from, data, seed, lr and schedule, epochs / max_steps, micro_batch_size x grad_accum, ...) and the
# fingerprints of the weights and packed data define the run (utils.prepare_run_dir).
RUN_SETTINGS = ("output_dir", "resume", "overwrite", "save_every", "keep_last", "activation_checkpointing",
                "cpu_offload", "hybrid_shard", "attention", "loss_chunk", "export_dtype", "peak_tflops",
                "reduce_every_micro_batch", "dry_run", "world_size", "seq_len", "gpu_memory_gb")
RUN_OUTPUTS = ("metrics.jsonl", "memory_rank*.json", "checkpoints", "final", "final.tmp")


def preflight(cfg: SFTConfig) -> None:
    """Every flag, folder and file checked before anything is loaded or written (DataError, one line)."""
    utils.check_fields(cfg)
    for name in ("data", "output_dir"):
        if getattr(cfg, name) is None:
            raise DataError(f"--{name}", None, None, "required (only --dry_run runs without it)", reason="bad_flag")
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
        self.meta = utils.read_json(meta_path)
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
        sample_lengths (real samples only), n_tokens (real), n_supervised, rows [n_supervised] (their positions)."""
        idx = [int(i) for i in indices]
        ids = torch.from_numpy(np.stack([self.input_ids[i] for i in idx]).astype(np.int64))
        labels = torch.from_numpy(np.stack([self.labels[i] for i in idx]).astype(np.int64))
        pos = torch.from_numpy(np.stack([self.position_ids[i] for i in idx]).astype(np.int64))
        cus = [self.cu(i) for i in idx]
        targets = utils.shift_labels_packed(labels, pos)
        lengths = [b - a for cu in cus for a, b in zip(cu[:-1], cu[1:])]
        rows = (targets.reshape(-1) != IGNORE_INDEX).nonzero()[:, 0]  # supervised rows, found here on the host
        return {"input_ids": ids.reshape(1, -1), "position_ids": pos.reshape(1, -1), "targets": targets.reshape(1, -1),
                "cu_seqlens": utils.packed_boundaries(cus, self.seq_len), "sample_lengths": lengths,
                "n_tokens": sum(cu[-1] for cu in cus), "n_supervised": len(rows), "rows": rows}


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

    def forward(self, input_ids, position_ids, targets, cu_seqlens: list[int], rows=None):
        """input_ids / position_ids / targets [1, T] on the device, cu_seqlens python ints, rows [n] the supervised
        positions (on the device; None: found here, a host sync). No step here waits for the GPU."""
        cu_t = to_device(torch.tensor(cu_seqlens, dtype=torch.int32), input_ids.device)
        max_len = max(b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]))
        hidden = self.hf.model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                               lexlab_cu_seqlens=cu_seqlens, lexlab_cu_seqlens_t=cu_t, lexlab_max_seqlen=max_len,
                               lexlab_backend=self.backend).last_hidden_state
        return utils.chunked_cross_entropy_sum(hidden[0], self.hf.lm_head.weight, targets[0], self.loss_chunk, rows)


def to_device(t, device):
    """Host tensor -> device without a host-device sync (pinned memory, non-blocking copy) on GPU."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def load_model(cfg: SFTConfig, device):
    """-> (sharded PackedCausalLM in train mode, its HF model, attention backend). Built on the meta device; rank 0
    reads the weights once and broadcasts them shard by shard (utils.load_sharded_model)."""
    utils.register_packed_attention()
    backend = utils.pick_attention_backend(device) if cfg.attention == "auto" else cfg.attention
    model, hf = utils.load_sharded_model(cfg.init_from or cfg.model, device,
                                         wrap=lambda hf: PackedCausalLM(hf, backend, cfg.loss_chunk),
                                         hybrid_shard=cfg.hybrid_shard, cpu_offload=cfg.cpu_offload,
                                         activation_checkpointing=cfg.activation_checkpointing,
                                         attn_implementation=utils.PACKED_ATTENTION)
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
    rank backpropagates its part times `world`, because FSDP averages (divides by world) when it reduces gradients.
    Gradients are reduce-scattered after every micro-batch unless --reduce_every_micro_batch false. The only host
    syncs are the step's three all-reduced counts / the loss / the gradient norm: none per micro-batch.
    Gradients are left in place after the step (read by utils.state_bytes) and cleared at the start of the next."""
    optimizer.zero_grad(set_to_none=True)
    per_rank = cfg.grad_accum * cfg.micro_batch_size
    mine = step_packs[rank * per_rank:(rank + 1) * per_rank]
    batches = [data.batch(mine[m * cfg.micro_batch_size:(m + 1) * cfg.micro_batch_size]) for m in range(cfg.grad_accum)]
    counts = torch.tensor([sum(b["n_supervised"] for b in batches), sum(b["n_tokens"] for b in batches),
                           sum(L * L for b in batches for L in b["sample_lengths"])], dtype=torch.float64, device=device)
    dist.all_reduce(counts)
    n_sup = max(1.0, counts[0].item())
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for m, b in enumerate(batches):
        if not cfg.reduce_every_micro_batch:
            model.set_requires_gradient_sync(m == len(batches) - 1)  # reduce-scatter once, after the last one
        ce = model(*(to_device(b[k], device) for k in ("input_ids", "position_ids", "targets")), b["cu_seqlens"],
                   to_device(b["rows"], device))
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
    return {"loss": loss, "grad_norm": grad_norm, "n_tokens": counts[1].item(), "sum_len_sq": counts[2].item(),
            "n_supervised": counts[0].item()}


# ----------------------------------------------------------------------------------------------------------------------
# 5. Main loop
# ----------------------------------------------------------------------------------------------------------------------

def write_memory_report(path, cfg: SFTConfig, world: int, seq_len: int, hf_config, measured: dict,
                        peak_gb: float, device):
    """memory_rankR.json: utils.memory_plan for this run next to the bytes this rank holds after its first step."""
    plan = utils.memory_plan(hf_config, world, seq_len, cfg.micro_batch_size, cfg.activation_checkpointing,
                             cfg.loss_chunk, mixed_precision=device.type == "cuda", grad_accum=cfg.grad_accum,
                             reduce_every_micro_batch=cfg.reduce_every_micro_batch)
    Path(path).write_text(json.dumps({"plan": plan, "measured": measured, "measured_peak_gb": peak_gb,
                                      "plan_total_gb": plan["total"] / 2 ** 30, "device": device.type}, indent=1))


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # peak RSS (KiB on Linux)


def dry_run(cfg: SFTConfig) -> dict:
    """Print the memory plan per GPU for cfg (config.json only, meta device) and return it."""
    from transformers import AutoConfig
    cfg_path = Path(cfg.model) / "config.json"
    if not cfg_path.is_file():
        raise DataError(cfg_path, None, None, "file not found (--dry_run needs the model's config.json)",
                        reason="missing_file")
    world = cfg.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    seq_len = cfg.seq_len or (PackedStage(cfg.data).seq_len if cfg.data else 32768)
    plan = utils.memory_plan(AutoConfig.from_pretrained(cfg.model), world, seq_len, cfg.micro_batch_size,
                             cfg.activation_checkpointing, cfg.loss_chunk, mixed_precision=True,
                             grad_accum=cfg.grad_accum, reduce_every_micro_batch=cfg.reduce_every_micro_batch)
    print(utils.format_memory_plan(
        plan, cfg.gpu_memory_gb, f"memory plan: {cfg.model} ({plan['n_params'] / 1e9:.2f}B params), {world} GPUs, "
        f"seq_len {seq_len} x micro_batch {cfg.micro_batch_size}, activation_checkpointing "
        f"{str(cfg.activation_checkpointing).lower()}, bf16 compute, fp32 master weights + AdamW"), flush=True)
    return plan


def main(argv=None):
    cfg = utils.parse_config(SFTConfig, argv)
    try:
        if cfg.dry_run:
            dry_run(cfg)
            return
        preflight(cfg)
    except DataError as e:
        utils.fail("sft.py", e)
    rank, _, world, device = utils.dist_init(cfg.seed)
    try:
        run(cfg, rank, world, device)
    except DataError as e:
        utils.fail("sft.py", e)
    except FloatingPointError as e:  # not bad input: the run diverged (exit 1)
        print(f"sft.py: error: {e}", file=sys.stderr, flush=True)
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
    identity = utils.run_identity(cfg, RUN_SETTINGS, {"model_fingerprint": utils.fingerprint(cfg.model),
                                                      "init_fingerprint": utils.fingerprint(cfg.init_from or cfg.model),
                                                      "data_fingerprint": utils.fingerprint(cfg.data)})
    utils.prepare_run_dir(out, identity, cfg.resume == "auto", cfg.overwrite, RUN_OUTPUTS, ckpt_dir=ckpt_root)
    order = pack_order(data.n, packs_per_step, cfg.num_epochs, cfg.seed)
    total_steps = len(order) if cfg.max_steps is None else min(cfg.max_steps, len(order))
    warmup = max(1, int(cfg.warmup_ratio * total_steps))

    model, hf, backend = load_model(cfg, device)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: utils.lr_at(s, total_steps, warmup, cfg.min_lr_ratio))
    if rank == 0:
        utils.save_config(cfg, out)
    n_body, n_head = utils.flop_params(hf)  # DTensor numel = global size
    hc = hf.config
    attn_dim = utils.attention_dim(hc)
    peak = cfg.peak_tflops or utils.datasheet_tflops(device)

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
        flops = utils.train_flops(n_body, r["n_tokens"], r["sum_len_sq"], hc.num_hidden_layers, attn_dim, n_head,
                                  r["n_supervised"])  # lm_head runs on the supervised rows only
        mfu = flops / dt / (world * peak * 1e12) if peak else None  # the step's global FLOPs over all devices' peak
        row = {"step": step + 1, "loss": r["loss"], "grad_norm": r["grad_norm"], "lr": lr,
               "tokens_per_s": r["n_tokens"] / dt, "mfu": mfu, "peak_mem_gb": peak_memory_gb(device),
               "time_s": dt, "n_tokens": r["n_tokens"], "n_supervised": r["n_supervised"], "sum_len_sq": r["sum_len_sq"]}
        if step == start:  # the memory plan beside what this rank holds (and its peak) after the first step
            write_memory_report(out / f"memory_rank{rank}.json", cfg, world, data.seq_len, hf.config,
                                utils.state_bytes(model, optimizer), row["peak_mem_gb"], device)
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
