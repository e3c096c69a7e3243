"""
sft.py - supervised fine-tuning on packed sequences (InternLM-Law two-stage recipe), FSDP2, one readable file.

    torchrun --nproc_per_node 8 sft.py --model Qwen2.5-7B --data out/stage1 --out runs/stage1
    torchrun --nproc_per_node 8 sft.py --model Qwen2.5-7B --init_from runs/stage1/final --data out/stage2 \
        --out runs/stage2

Reads a packed stage written by prepare_data.py (input_ids / labels / position_ids / cu_seqlens / cu_offsets .npy +
meta.json), trains with the loss summed over assistant tokens and divided by the GLOBAL number of supervised tokens of
the optimizer step (so micro-batch size, gradient accumulation and world size do not change the update), and writes
OUT/metrics.jsonl, OUT/config.json, OUT/checkpoints/step_N (DCP, atomic, last K kept) and OUT/final/ (a Hugging Face
folder). Plain `python sft.py ...` runs as a world of one; on CPU everything runs over gloo.

Sections: 1. config  2. data  3. model  4. training step  5. main loop  6. FLOPs and memory plan
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
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
    out: str | None = field(default=None, metadata={"help": "run folder: metrics.jsonl, checkpoints/, final/ "
                                                            "(required, except with --dry_run)",
                                                    "alias": "--output_dir"})
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
    resume: str | None = field(default=None, metadata={"help": "'auto': continue the run in OUT from its newest "
                                                                 "checkpoint (same config only, see RUN_SETTINGS)",
                                                       "choices": ("auto",)})
    overwrite: bool = field(default=False, metadata={"help": "OUT holds a run: delete it and start clean"})
    activation_checkpointing: str = field(default="auto", metadata={
        "help": "recompute each block in backward; auto: on when the memory plan without it needs more than "
                "utils.AUTO_TARGET (90%) of the GPU (off on CPU)", "choices": ("auto", "true", "false")})
    reduce_every_micro_batch: bool = field(default=True, metadata={
        "help": "reduce-scatter gradients after every micro-batch (sharded accumulation, as torchtitan); false: "
                "reduce once per step, FSDP2 then holds full-size fp32 gradients between micro-batches (4 bytes x "
                "params per GPU: 30 GB for 7B) - only for small models on slow interconnects"})
    cpu_offload: bool = field(default=False, metadata={
        "help": "FSDP2 CPU offload: fp32 params, grads and AdamW state in (pinned) host RAM, clipping and the optimizer "
                "step on the CPU (process group cuda:nccl,cpu:gloo); --dry_run says the host RAM per node"})
    hybrid_shard: bool = field(default=False, metadata={"help": "shard inside a node, replicate across nodes"})
    attention: str = field(default="auto", metadata={"help": "packed attention kernel (auto: flash > torch_varlen on "
                                                             "GPU, exact on CPU)",
                                                     "choices": ("auto", "flash", "torch_varlen", "exact")})
    loss_chunk: int = field(default=4096, metadata={"help": "tokens per cross-entropy chunk", "min": 1})
    export_dtype: str = field(default="auto", metadata={"help": "final/ weights (auto: bfloat16 on GPU, float32 on "
                                                                "CPU)", "choices": ("auto", "bfloat16", "float32")})
    peak_tflops: float | None = field(default=None, metadata={
        "help": "per-device dense bf16 peak for MFU (default: the datasheet's, PEAK_TFLOPS)", "gt": 0})
    dry_run: bool = field(default=False, metadata={
        "help": "print the memory plan per GPU (needs only --model's config.json; no weights, no data) and exit"})
    world_size: int | None = field(default=None, metadata={"help": "dry_run: GPUs (default: $WORLD_SIZE or 1)",
                                                           "min": 1})
    seq_len: int | None = field(default=None, metadata={"help": "dry_run: tokens per pack (default: --data's, else "
                                                                "32768)", "min": 1})
    gpu_memory_gb: float | None = field(default=None, metadata={
        "help": "memory of one GPU in GiB the plan must fit (default: --dry_run 80; a real run the device's, and at "
                "most this when given)", "gt": 0})


# How a run runs, not what it computes: the only fields that may change on --resume auto. Every other field (model,
# init_from, data, seed, lr and schedule, epochs / max_steps, micro_batch_size x grad_accum, ...) and the
# fingerprints of the weights and packed data define the run (utils.prepare_run_dir).
RUN_SETTINGS = ("out", "resume", "overwrite", "save_every", "keep_last", "activation_checkpointing",
                "cpu_offload", "hybrid_shard", "attention", "loss_chunk", "export_dtype", "peak_tflops",
                "reduce_every_micro_batch", "dry_run", "world_size", "seq_len", "gpu_memory_gb")
RUN_OUTPUTS = ("metrics.jsonl", "memory_rank*.json", "checkpoints", "final", "final.tmp")


def preflight(cfg: SFTConfig) -> None:
    """Every flag, folder and file checked before anything is loaded or written (DataError, one line)."""
    utils.check_fields(cfg)
    for name in ("data", "out"):
        if getattr(cfg, name) is None:
            raise DataError(f"--{name}", None, None, "required (only --dry_run runs without it)", reason="bad_flag")
    if cfg.attention in ("flash", "torch_varlen") and not torch.cuda.is_available():
        raise DataError("--attention", None, None, f"{cfg.attention} needs CUDA (use auto or exact)", reason="bad_flag")
    utils.check_out_dir(cfg.out, "--out")
    PackedStage(cfg.data)  # meta.json and the arrays: present, shapes consistent (memory-mapped, nothing read)
    utils.check_model_dir(cfg.model, "--model", weights=cfg.init_from is None)
    if cfg.init_from is not None:
        utils.check_model_dir(cfg.init_from, "--init_from", tokenizer=False)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Data: a packed stage (layout: utils section 7), memory-mapped
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
        targets = shift_labels_packed(labels, pos)
        lengths = [b - a for cu in cus for a, b in zip(cu[:-1], cu[1:])]
        rows = (targets.reshape(-1) != IGNORE_INDEX).nonzero()[:, 0]  # supervised rows, found here on the host
        return {"input_ids": ids.reshape(1, -1), "position_ids": pos.reshape(1, -1), "targets": targets.reshape(1, -1),
                "cu_seqlens": packed_boundaries(cus, self.seq_len), "sample_lengths": lengths,
                "n_tokens": sum(cu[-1] for cu in cus), "n_supervised": len(rows), "rows": rows}


def shift_labels_packed(labels, position_ids):
    """Next-token targets inside each sample. labels, position_ids [..., T] (unshifted, -100 = not supervised,
    position 0 = a sample starts) -> targets [..., T] with targets[t] = labels[t+1] unless token t+1 starts a new
    sample (or is padding), and -100 at the last position."""
    nxt = torch.full_like(labels, IGNORE_INDEX)
    nxt[..., :-1] = labels[..., 1:]
    starts = torch.zeros_like(labels, dtype=torch.bool)
    starts[..., :-1] = position_ids[..., 1:] == 0
    return nxt.masked_fill(starts, IGNORE_INDEX)


def packed_boundaries(cu_seqlens_per_pack: list, seq_len: int) -> list[int]:
    """Per-pack cumulative sample lengths -> one flat boundary list for the micro-batch laid end to end.

    cu_seqlens_per_pack: B lists [0, l0, l0+l1, ..., n_real]; the padding tail of a pack (n_real..seq_len) becomes a
    segment of its own (it has no labels; it only keeps total length = B*seq_len, as flash-attn wants).
    Returns [0, ..., B*seq_len] (strictly increasing)."""
    out = [0]
    for b, cu in enumerate(cu_seqlens_per_pack):
        base = b * seq_len
        for c in list(cu)[1:]:
            if c > 0 and base + int(c) > out[-1]:
                out.append(base + int(c))
        if out[-1] < base + seq_len:
            out.append(base + seq_len)
    return out


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

    The loss is computed here (in the FSDP root's forward, where lm_head's weight is gathered) on the supervised rows
    only, in chunks (utils.chunked_token_logprobs, the lm-head rl.PolicyLM uses too), so the full [tokens x vocab]
    logits never exist. Why not one wrapper with rl.PolicyLM: utils stays importable without torch (judge.py,
    prepare_data.py), and the two differ in what the root's forward returns (a loss here; per-token log-probs,
    entropy and the generate path there); the shared work is utils.packed_hidden + utils.chunked_token_logprobs."""

    def __init__(self, hf_model, backend: str = "exact", loss_chunk: int = 4096):
        super().__init__()
        self.hf, self.backend, self.loss_chunk = hf_model, backend, loss_chunk

    def forward(self, input_ids, position_ids, targets, cu_seqlens: list[int], rows=None):
        """input_ids / position_ids / targets [1, T] on the device (targets -100 = not supervised), cu_seqlens python
        ints, rows [n] the supervised positions (int64, on the device, found on the host by PackedStage.batch) ->
        scalar fp32 sum of cross-entropy. rows=None: found here with a boolean mask (a host sync on GPU; tests only).
        No step here waits for the GPU."""
        hidden = utils.packed_hidden(self.hf, input_ids, position_ids, cu_seqlens, self.backend)[0]
        if rows is None:
            rows = (targets[0] != IGNORE_INDEX).nonzero()[:, 0]
        logp, _ = utils.chunked_token_logprobs(hidden.index_select(0, rows), self.hf.lm_head.weight,
                                               targets[0].index_select(0, rows), chunk_size=self.loss_chunk)
        return -logp.sum()


def load_model(cfg: SFTConfig, device):
    """-> (sharded PackedCausalLM in train mode, its HF model, attention backend). Built on the meta device; rank 0
    reads the weights once and broadcasts them shard by shard (utils.load_sharded_model)."""
    backend = utils.pick_attention_backend(device, cfg.attention)
    model, hf = utils.load_sharded_model(cfg.init_from or cfg.model, device,
                                         wrap=lambda hf: PackedCausalLM(hf, backend, cfg.loss_chunk),
                                         hybrid_shard=cfg.hybrid_shard, cpu_offload=cfg.cpu_offload,
                                         activation_checkpointing=cfg.activation_checkpointing in (True, "true"))
    return model, hf, backend


# ----------------------------------------------------------------------------------------------------------------------
# 4. One optimizer step
# ----------------------------------------------------------------------------------------------------------------------

def lr_at(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1) -> float:
    """LR multiplier for optimizer step `step` (0-based): linear warmup to 1 over warmup_steps, then cosine decay to
    min_lr_ratio at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_step(model, optimizer, data: PackedStage, step_packs, cfg: SFTConfig, rank: int, world: int, device,
               step: int) -> dict:
    """Forward/backward over this rank's micro-batches of the step's packs, then clip and (if finite) step.
    step: 0-based (metrics.jsonl and messages say step + 1).

    step_packs: the global pack indices of this step [world * grad_accum * micro_batch_size]; rank r takes the r-th
    contiguous slice. Loss = sum of CE over the step's supervised tokens (all ranks) / their global count; each
    rank backpropagates its part times `world`, because FSDP averages (divides by world) when it reduces gradients.
    Gradients are reduce-scattered after every micro-batch unless --reduce_every_micro_batch false. The only host
    syncs are the step's three all-reduced counts / the loss / the gradient norm: none per micro-batch.
    Gradients are left in place after the step (read by state_bytes) and cleared at the start of the next."""
    optimizer.zero_grad(set_to_none=True)
    per_rank = cfg.grad_accum * cfg.micro_batch_size
    mine = step_packs[rank * per_rank:(rank + 1) * per_rank]
    batches = [data.batch(mine[m * cfg.micro_batch_size:(m + 1) * cfg.micro_batch_size]) for m in range(cfg.grad_accum)]
    counts = torch.tensor([sum(b["n_supervised"] for b in batches), sum(b["n_tokens"] for b in batches),
                           sum(L * L for b in batches for L in b["sample_lengths"])], dtype=torch.float64, device=device)
    n_sup_all, n_tok, sum_sq = utils.all_reduce(counts).tolist()  # one host sync for the three
    n_sup = max(1.0, n_sup_all)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for m, b in enumerate(batches):
        if not cfg.reduce_every_micro_batch:
            model.set_requires_gradient_sync(m == len(batches) - 1)  # reduce-scatter once, after the last one
        ids, pos, targets, rows = (utils.to_device(b[k], device) for k in ("input_ids", "position_ids", "targets",
                                                                            "rows"))
        ce = model(ids, pos, targets, b["cu_seqlens"], rows)
        (ce * (world / n_sup)).backward()
        loss_sum += ce.detach().double()
    loss_sum = utils.all_reduce(loss_sum)
    loss = loss_sum.item() / n_sup
    grad_norm = utils.clip_grad_norm(model, cfg.max_grad_norm)
    utils.check_finite(step + 1, loss, grad_norm)  # a diverged run stops before the weights change
    optimizer.step()
    return {"loss": loss, "grad_norm": grad_norm, "n_tokens": n_tok, "sum_len_sq": sum_sq, "n_supervised": n_sup_all}


# ----------------------------------------------------------------------------------------------------------------------
# 5. Main loop
# ----------------------------------------------------------------------------------------------------------------------

def train(cfg: SFTConfig, device):
    """SFT in an initialised process group (main: torchrun or a world of one)."""
    from tqdm import tqdm
    rank, _, world, _ = utils.dist_info()
    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    data = PackedStage(cfg.data)
    packs_per_step = world * cfg.grad_accum * cfg.micro_batch_size
    if data.n < packs_per_step:
        raise DataError(cfg.data, None, None, f"{data.n} packs < {packs_per_step} needed for one step "
                        f"(world {world} x grad_accum {cfg.grad_accum} x micro_batch_size {cfg.micro_batch_size})")
    cfg, plan = plan_or_refuse(cfg, world, data.seq_len, device)  # before any weight is loaded; auto resolved

    model_fp = utils.fingerprint(cfg.model)
    identity = utils.run_identity(cfg, RUN_SETTINGS, {"model_fingerprint": model_fp,
                                                      "init_fingerprint": utils.fingerprint(cfg.init_from)
                                                      if cfg.init_from else model_fp,
                                                      "data_fingerprint": utils.fingerprint(cfg.data)})
    utils.prepare_run_dir(out, identity, cfg.resume == "auto", cfg.overwrite, RUN_OUTPUTS, ckpt_dir=ckpt_root)
    order = pack_order(data.n, packs_per_step, cfg.num_epochs, cfg.seed)
    total_steps = len(order) if cfg.max_steps is None else min(cfg.max_steps, len(order))
    warmup = max(1, int(cfg.warmup_ratio * total_steps))

    model, hf, backend = load_model(cfg, device)
    optimizer = utils.build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device,
                                      cfg.cpu_offload)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total_steps, warmup, cfg.min_lr_ratio))
    if rank == 0:
        utils.save_config(cfg, out)
    n_body, n_head = flop_params(hf)  # DTensor numel = global size
    hc = hf.config
    attn_dim = attention_dim(hc)
    peak = cfg.peak_tflops or datasheet_tflops(device)

    start = 0
    if cfg.resume == "auto" and (extra := utils.resume_checkpoint(ckpt_root, model, optimizer)) is not None:
        scheduler.load_state_dict(extra["scheduler"])
        start = extra["step"]
    metrics_path = out / "metrics.jsonl"
    if rank == 0:  # keep the history up to the resume point only
        utils.truncate_logs([metrics_path], start)
    print0(f"sft: {data.n} packs x {data.seq_len} tokens, {total_steps} steps of {packs_per_step} packs, world {world},"
           f" attention={backend}, device={device.type}")

    def save(step: int) -> Path:
        return utils.save_checkpoint(ckpt_root, step, model, optimizer, {
            "step": step, "scheduler": scheduler.state_dict(), "config": dataclasses.asdict(cfg)}, cfg.keep_last)

    bar = tqdm(range(start, total_steps), disable=rank != 0, desc="sft", initial=start, total=total_steps)
    with utils.GracefulStop("sft.py") as stop:  # Ctrl-C: stop at the end of the step, save, exit 130 (main)
        for step in bar:
            t0 = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)  # peak_mem_gb: this step's
            lr = scheduler.get_last_lr()[0]
            r = train_step(model, optimizer, data, order[step], cfg, rank, world, device, step)
            scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            flops = train_flops(n_body, r["n_tokens"], r["sum_len_sq"], hc.num_hidden_layers, attn_dim, n_head,
                                r["n_supervised"])  # lm_head runs on the supervised rows only
            mfu = flops / dt / (world * peak * 1e12) if peak else None  # the step's global FLOPs over all devices' peak
            row = {"step": step + 1, "loss": r["loss"], "grad_norm": r["grad_norm"], "lr": lr,
                   "tokens_per_s": r["n_tokens"] / dt, "mfu": mfu, "peak_mem_gb": utils.peak_memory_gb(device),
                   "time_s": dt, "n_tokens": r["n_tokens"], "n_supervised": r["n_supervised"],
                   "sum_len_sq": r["sum_len_sq"]}
            if step == start:  # memory_rankR.json: the plan beside what this rank holds (and its peak) after a step
                utils.write_json(out / f"memory_rank{rank}.json", {"plan": plan, "measured": state_bytes(
                    model, optimizer), "measured_peak_gb": row["peak_mem_gb"], "plan_total_gb": plan["total"] / 2 ** 30,
                    "device": device.type}, indent=1)
            if rank == 0:
                utils.append_jsonl(metrics_path, row)
                bar.set_postfix(loss=f"{r['loss']:.4f}", gn=f"{r['grad_norm']:.2f}")
            stop.after_step(step + 1, total_steps, cfg.save_every, save, ckpt_root)
    bar.close()

    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else None, "bfloat16": torch.bfloat16,
             "float32": torch.float32}[cfg.export_dtype]
    utils.export_hf(model, hf, cfg.model, out / "final", dtype=dtype, prefix="hf.")
    utils.done("sft.py", f"{out / 'final'}/ (the trained model), {metrics_path}",
               f"python evaluate.py generate --model {out / 'final'} --lawbench_dir LAWBENCH --out preds (or the next "
               f"stage: sft.py --init_from {out / 'final'} ..., rl.py --model {out / 'final'} ...)")


def main(argv=None):
    cfg = utils.parse_config(SFTConfig, argv)
    utils.run_command("sft.py", run, cfg, argv, resumable=True)


def run(cfg: SFTConfig):
    """--dry_run: print the plan. Otherwise every flag and input is checked (preflight) before the process group
    starts and anything loads, then train."""
    if cfg.dry_run:
        return dry_run(cfg)
    preflight(cfg)
    train(cfg, utils.dist_init(cfg.seed, cpu_offload=cfg.cpu_offload)[3])


# ----------------------------------------------------------------------------------------------------------------------
# 6. FLOPs (MFU) and the memory plan (the plan itself: utils section 9b, shared with rl.py)
# ----------------------------------------------------------------------------------------------------------------------

def train_flops(n_params: int, n_tokens: float, sum_len_sq: float, n_layers: int, attn_dim: int,
                lm_head_params: int = 0, n_lm_head_tokens: float = 0) -> float:
    """Training FLOPs (forward + backward = 3x forward) of one step, torchtitan's convention:
    6 * n_params * tokens for the matmuls of the decoder blocks (n_params WITHOUT the embedding and lm_head: an
    embedding lookup is not a matmul), 6 * lm_head_params * n_lm_head_tokens for the output projection on the rows
    where it is computed (sft.py: supervised tokens only), plus causal attention per sample:
    2 matmuls (QK^T, AV) x 2 flops x L^2/2 x attn_dim x layers x 3 = 6 L^2 d layers.
    sum_len_sq = sum over the step's samples of L^2: attention is counted per sample (packing does not pay for
    cross-sample attention)."""
    return 6.0 * n_params * n_tokens + 6.0 * lm_head_params * n_lm_head_tokens + 6.0 * sum_len_sq * attn_dim * n_layers


def flop_params(model) -> tuple[int, int]:
    """-> (decoder parameters without embedding and lm_head, lm_head parameters) of a Hugging Face causal LM (real,
    meta or sharded: DTensor numel is the global size). Tied embeddings: the lm_head matmul still runs, so
    lm_head counts once although the weight is the embedding's."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters() if p is not emb and p is not head)
    return body, head.numel()


def attention_dim(config) -> int:
    """Query heads x head_dim (the attention FLOPs' width)."""
    return config.num_attention_heads * (getattr(config, "head_dim", None) or
                                         config.hidden_size // config.num_attention_heads)


# Dense bf16 datasheet peak per GPU, TFLOP/s (no sparsity): the MFU denominator.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "H20": 148.0, "A100": 312.0, "A800": 312.0}


def datasheet_tflops(device) -> float | None:
    """Dense bf16 peak of this GPU from PEAK_TFLOPS (None on CPU / an unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def state_bytes(model, optimizer) -> dict:
    """What this rank actually holds: bytes of its parameter shards, gradient shards and optimizer state (DTensors:
    the local shard; on the GPU or, with cpu_offload, in host RAM). The measured side of memory_plan's params /
    grads / optimizer."""
    import torch

    def local(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()
    params = list({id(p): p for p in model.parameters()}.values())
    opt = sum(local(v) for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor))
    return {"params": sum(local(p) for p in params), "grads": sum(local(p.grad) for p in params if p.grad is not None),
            "optimizer": opt, "device": params[0].to_local().device.type if hasattr(params[0], "to_local")
            else params[0].device.type}


def sft_plan(hf_config, cfg: SFTConfig, world: int, seq_len: int, mixed_precision: bool = True,
             **changes) -> dict:
    """utils.memory_plan for cfg (with `changes`: field -> value, e.g. cpu_offload=True); activation_checkpointing
    must be resolved (true/false) in cfg or changes."""
    c = dataclasses.replace(cfg, **changes)
    assert c.activation_checkpointing in (True, False, "true", "false"), c.activation_checkpointing
    # ranks per node: torchrun's when the world comes from it; a dry run's --world_size plans full nodes of 8
    local = None if cfg.world_size else utils.dist_info().local_world
    return utils.memory_plan(hf_config, world, seq_len, c.micro_batch_size, c.activation_checkpointing in (True, "true"),
                             c.loss_chunk, mixed_precision, c.grad_accum, c.reduce_every_micro_batch, c.cpu_offload,
                             c.hybrid_shard, local_world_size=local)


def plan_run(cfg: SFTConfig, hf_config, world: int, seq_len: int, gpu_gb: float | None,
             mixed_precision: bool = True) -> tuple[SFTConfig, dict, str, str | None]:
    """The memory plan of this run -> (cfg with activation_checkpointing resolved, plan, table, flags that would fit
    or None). auto checkpointing: on when the plan without it exceeds AUTO_TARGET of gpu_gb (no GPU: off)."""
    ac = cfg.activation_checkpointing
    if ac not in (True, False, "true", "false"):
        off = sft_plan(hf_config, cfg, world, seq_len, mixed_precision, activation_checkpointing="false")
        ac = "true" if gpu_gb is not None and not utils.fits(off["total"], gpu_gb, utils.AUTO_TARGET) else "false"
        how = f"auto -> {ac}"
    else:
        ac = "true" if ac in (True, "true") else "false"
        how = ac
    cfg = dataclasses.replace(cfg, activation_checkpointing=ac)
    plan = sft_plan(hf_config, cfg, world, seq_len, mixed_precision)
    fix = None
    if gpu_gb is not None and not utils.fits(plan["total"], gpu_gb):
        t, o = {"activation_checkpointing": True}, {"activation_checkpointing": True, "cpu_offload": True}
        cands = [t, {**t, "micro_batch_size": 1}, {**t, "loss_chunk": 1024}, o, {**o, "loss_chunk": 1024},
                 {**o, "micro_batch_size": 1, "loss_chunk": 1024}]
        cands = [c for c in cands if any(getattr(cfg, k) not in (v, str(v).lower()) for k, v in c.items())]
        fix = utils.first_fit(lambda ch: utils.fits(sft_plan(hf_config, cfg, world, seq_len, mixed_precision,
                                                             **ch)["total"], gpu_gb), cands)
    notes = [f"(activations, AC off) {plan['activations_no_ac'] / 2 ** 30:9.2f}",
             f"(activations, AC on)  {plan['activations_ac'] / 2 ** 30:9.2f}"] + \
            ([f"flags that fit: {fix}"] if fix else [])
    header = (f"memory plan: {cfg.model} ({plan['n_params'] / 1e9:.2f}B params), {world} GPUs, seq_len {seq_len} x "
              f"micro_batch {cfg.micro_batch_size}, activation_checkpointing {how}, cpu_offload "
              f"{str(cfg.cpu_offload).lower()}, {'bf16 compute' if mixed_precision else 'fp32'}, fp32 master weights "
              f"+ AdamW")
    table = utils.format_plan(utils.plan_rows(plan), plan["total"], gpu_gb or 0, header, notes, host=plan)
    return cfg, plan, table, fix


def plan_or_refuse(cfg: SFTConfig, world: int, seq_len: int, device) -> tuple[SFTConfig, dict]:
    """A real run's plan before any weight is loaded (as rl.plan_or_refuse): -> (cfg with activation_checkpointing
    resolved, plan); on GPU a plan that does not fit stops the run with the table and the flags that would fit."""
    from transformers import AutoConfig
    gpu_gb = utils.device_memory_gb(device, cfg.gpu_memory_gb)
    cfg, plan, table, fix = plan_run(cfg, AutoConfig.from_pretrained(cfg.init_from or cfg.model), world, seq_len,
                                     gpu_gb, mixed_precision=device.type == "cuda")
    if gpu_gb is not None:
        if not utils.fits(plan["total"], gpu_gb):
            utils.refuse_plan("sft.py", table, fix, gpu_gb)
        utils.check_host_ram("sft.py", table, plan)
        print0(f"sft: memory plan {plan['total'] / 2 ** 30:.1f} of {gpu_gb:.1f} GiB per GPU, activation_checkpointing "
               f"{cfg.activation_checkpointing}" + (f", host RAM {plan['host_per_node'] / 2 ** 30:.0f} GiB per node"
                                                    if cfg.cpu_offload else ""))
    return cfg, plan


def dry_run(cfg: SFTConfig) -> dict:
    """Print the memory plan per GPU for cfg (config.json only, meta device) and return it."""
    from transformers import AutoConfig
    utils.check_model_dir(cfg.model, weights=False, tokenizer=False)  # --dry_run needs only config.json
    world = cfg.world_size or utils.dist_info().world
    seq_len = cfg.seq_len or (PackedStage(cfg.data).seq_len if cfg.data else 32768)
    _, plan, table, _ = plan_run(cfg, AutoConfig.from_pretrained(cfg.model), world, seq_len,
                                 cfg.gpu_memory_gb or 80.0)
    print(table, flush=True)
    return plan


if __name__ == "__main__":
    sys.exit(main())
