"""
GRPO on judgment facts with legal rewards (LexPro-1.0's RL stage), in one file.

    torchrun --nproc_per_node N rl.py --model DIR --prompts RL_PROMPTS.jsonl --out OUT \
        [--group_size G] [--max_steps K] [--backend vllm|hf] ...

Per step: sample `prompts_per_step` prompts (per rank), G completions each (vLLM colocated, or HF generate), score
them with legal_reward, compute group-normalised advantages, recompute the old log-probs with the trainer,
take `mu` inner epochs of clipped-ratio updates, push the new weights into the vLLM engine. Writes OUT/metrics.jsonl
(a `reward` field per step), OUT/samples.jsonl, OUT/checkpoints/step_N (DCP, atomic, last K kept; `--resume auto`)
and OUT/final/ (Hugging Face folder). Plain `python rl.py ...` runs as a world of one; on CPU everything runs over gloo.

Sections:
  1. Config
  2. GRPO math            - pure functions with shapes in the docstrings (tests/test_rl.py checks them by hand)
  3. Rollouts             - vLLM colocated (one engine per rank: external_launcher, bf16, sleep mode) with a
                            streamed per-step weight push, or HF generate; prompts fitted to the budget
  4. Trainer              - FSDP2 via utils section 9 (as sft.py): policy and frozen reference sharded per decoder
                            block + root, loss x world_size because FSDP2 averages gradients; padding-free packed
                            forward, chunked log-probs at the sampling temperature, collectives on the device
  5. Loop                 - one step = rollout -> score -> advantages -> optimise -> push -> log -> save; export
"""
from __future__ import annotations

import dataclasses
import math
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

import utils


# ----------------------------------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class RLConfig:
    """GRPO with legal rewards (charge / statute / sentence / format)."""
    model: str = field(metadata={"help": "Hugging Face model folder (policy init and reference)"})
    prompts: str | None = field(default=None, metadata={
        "help": "rl_prompts.jsonl: {prompt, truth} per line (prepare_data.py) (required, except with --dry_run)"})
    out: str | None = field(default=None, metadata={
        "help": "run folder: metrics.jsonl, samples.jsonl, checkpoints/, final/ (required, except with --dry_run)",
        "alias": "--output_dir"})
    group_size: int = field(default=8, metadata={"help": "G completions per prompt", "min": 2})
    prompts_per_step: int = field(default=4, metadata={"help": "prompts per rank per step", "min": 1})
    max_steps: int = field(default=100, metadata={"help": "optimizer-step groups (one rollout batch each)",
                                                  "min": 1})
    mu: int = field(default=1, metadata={"help": "inner epochs over each rollout batch", "min": 1})
    lr: float = field(default=1e-6, metadata={"help": "AdamW learning rate", "gt": 0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decay of matrices only", "min": 0})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (L2; 0 = off)", "min": 0})
    micro_batch_size: int = field(default=16, metadata={"help": "sequences per forward/backward", "min": 1})
    micro_batch_tokens: int | None = field(default=None, metadata={
        "help": "also cap a micro-batch at this many packed tokens (prompt + completion; 0 = rows only; default: the "
                "largest cap the memory plan fits on GPU, rows only on CPU)", "min": 0})
    logprob_chunk: int = field(default=4096, metadata={
        "help": "completion tokens per lm_head chunk (logsumexp + gather; peak extra memory chunk x vocab)", "min": 1})
    clip_low: float = field(default=0.2, metadata={"help": "ratio clip below: 1 - clip_low", "min": 0, "max": 1})
    clip_high: float = field(default=0.28, metadata={"help": "ratio clip above: 1 + clip_high (DAPO clip-higher)",
                                                     "min": 0})
    beta: float = field(default=0.0, metadata={"help": "k3 KL coefficient to the frozen reference (0: no reference)",
                                                "min": 0})
    loss_agg: str = field(default="token_mean",
                          metadata={"help": "token_mean (DAPO) | seq_mean (GRPO) | constant (Dr. GRPO)",
                                    "choices": ("token_mean", "seq_mean", "constant")})
    scale_std: bool = field(default=True, metadata={"help": "divide advantages by the group std (false: Dr. GRPO)"})
    dynamic_sampling: bool = field(default=False, metadata={"help": "drop groups whose rewards are all equal (DAPO)"})
    mask_truncated: bool = field(default=False, metadata={"help": "exclude completions that hit max_new_tokens"})
    max_new_tokens: int = field(default=512, metadata={"help": "completion length limit", "min": 1})
    max_prompt_tokens: int = field(default=2048, metadata={"help": utils.MAX_PROMPT_TOKENS_HELP, "min": 1})
    temperature: float = field(default=1.0, metadata={
        "help": "sampling temperature; the trainer scores logits / temperature too (policy and reference)", "gt": 0})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (1.0 = off)", "gt": 0, "max": 1})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)", "min": 0})
    response_prefix: str = field(default="", metadata={"help": "text forced at the start of every completion"})
    reward_weights: str = field(default="", metadata={"help": "e.g. charge=0.35,article=0.25,term=0.25,format=0.15"})
    charge_list: str | None = field(default=None,
                                    metadata={"help": "official charge list (default ../shared accu.txt)"})
    backend: str = field(default="hf", metadata={"help": "rollouts: vllm (colocated) | hf (generate)",
                                                 "choices": ("hf", "vllm")})
    vllm_kv_bytes: int = field(default=1 << 30, metadata={"help": "vLLM KV cache size in bytes (CPU only)", "min": 1})
    gpu_memory_utilization: float | None = field(default=None, metadata={
        "help": "vLLM's share of GPU memory (GPU only; default: what the memory plan says the engine needs - weights, "
                "KV cache for the step's group, overhead)", "min": 0.01, "max": 1})
    vllm_dtype: str = field(default="auto", metadata={
        "help": "engine dtype; auto = bfloat16 on GPU whatever the trainer's dtype, the trainer's dtype on CPU",
        "choices": ("auto", "bfloat16", "float16", "float32")})
    vllm_sleep: bool = field(default=True, metadata={
        "help": "GPU: engine sleeps (weights and KV cache freed) while the trainer runs, woken for the weight push"})
    tis_cap: float = field(default=0.0, metadata={
        "help": "truncated importance sampling cap for the vLLM-vs-trainer log-prob mismatch (0 = off; TRL uses 2)",
        "min": 0})
    dtype: str = field(default="float32", metadata={"help": "policy weights dtype", "choices": ("float32", "bfloat16")})
    seed: int = field(default=0, metadata={"help": "seed (prompt sampler, sampling, init)", "min": 0})
    log_every: int = field(default=1, metadata={"help": "print every N steps", "min": 0})
    sample_every: int = field(default=10, metadata={"help": "write decoded samples every N steps (0 = never)",
                                                   "min": 0})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only at the end)",
                                                 "min": 0})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept", "min": 1})
    resume: str | None = field(default=None, metadata={"help": "'auto': continue the run in OUT from its newest "
                                                                 "checkpoint (same config only, see RUN_SETTINGS)",
                                                       "choices": ("auto",)})
    overwrite: bool = field(default=False, metadata={"help": "OUT holds a run: delete it and start clean"})
    cpu_offload: bool = field(default=False, metadata={
        "help": "FSDP2 CPU offload of params/grads/optimizer (host RAM; process group cuda:nccl,cpu:gloo)"})
    hybrid_shard: bool = field(default=False, metadata={"help": "shard inside a node, replicate across nodes"})
    activation_checkpointing: str = field(default="auto", metadata={
        "help": "recompute each block in backward; auto: on when --micro_batch_size rows do not fit without it (memory "
                "plan; off on CPU)", "choices": ("auto", "true", "false")})
    dry_run: bool = field(default=False, metadata={
        "help": "print the memory plan per GPU, trainer + colocated engine (needs only --model's config.json), exit"})
    world_size: int | None = field(default=None, metadata={"help": "dry_run: GPUs (default: $WORLD_SIZE or 1)",
                                                           "min": 1})
    gpu_memory_gb: float | None = field(default=None, metadata={
        "help": "memory of one GPU in GiB the plan must fit (default: --dry_run 80; a real run the device's, and at "
                "most this when given)", "gt": 0})


# How a run runs, not what it computes: the only fields that may change on --resume auto (max_steps too: the LR is
# constant, so a run can be extended). Every other field (model, prompts, seed, group_size x prompts_per_step, lr,
# clipping, loss, sampling, rewards, ...) and the
# fingerprints of the model and the prompt file define the run (utils.prepare_run_dir).
RUN_SETTINGS = ("out", "resume", "overwrite", "max_steps", "log_every", "sample_every", "save_every",
                "keep_last", "cpu_offload", "hybrid_shard", "activation_checkpointing", "micro_batch_size",
                "micro_batch_tokens", "logprob_chunk", "backend", "vllm_kv_bytes", "gpu_memory_utilization",
                "vllm_sleep", "dry_run", "world_size", "gpu_memory_gb")
RUN_OUTPUTS = ("metrics.jsonl", "samples.jsonl", "checkpoints", "final", "final.tmp")
# utils.build_optimizer since 2026-12-05 (before: one group, every parameter decayed); part of the run's identity, so
# that --resume auto of an older run is refused in one line instead of failing inside the checkpoint loader
OPTIMIZER = "AdamW, weight decay on matrices only"


def preflight(cfg: RLConfig) -> None:
    """Every flag, file and folder checked before anything is loaded or written (DataError, one line): ranges and
    choices, reward weights, the charge list, every rl_prompts.jsonl record, the model folder."""
    utils.check_fields(cfg)
    for name in ("prompts", "out"):
        if getattr(cfg, name) is None:
            raise utils.DataError(f"--{name}", None, None, "required (only --dry_run runs without it)",
                                  reason="bad_flag")
    utils.check_backend(cfg.backend)
    utils.check_out_dir(cfg.out, "--out")
    parse_weights(cfg.reward_weights)
    if cfg.charge_list is not None:
        utils.load_charge_list(cfg.charge_list)
    load_prompts(cfg.prompts)  # every record checked, nothing tokenized
    utils.check_model_dir(cfg.model, "--model", chat_template=True)


# ----------------------------------------------------------------------------------------------------------------------
# 2. GRPO math (pure functions)
# ----------------------------------------------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-6):
    """rewards [B*G] (G consecutive completions per prompt) -> advantages [B*G] (float32).

    A = (r - mean_group) / (std_group + eps), std unbiased as in TRL/verl; scale_std=False gives Dr. GRPO's r - mean.
    eps = 1e-6 is verl's (TRL uses 1e-4). Computed in float64, and a group whose rewards are all equal
    (zero_variance_groups) gets exactly 0: in float32 the mean of 8 copies of 0.15 is off by ~1e-8, which divided by
    (0 + eps) gave the whole group one sign and |A| up to 0.12."""
    r = rewards.view(-1, group_size).double()
    adv = r - r.mean(dim=1, keepdim=True)
    if scale_std:
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        adv = adv / (std + eps)
    adv = adv.masked_fill(zero_variance_groups(rewards, group_size)[:, None], 0.0)
    return adv.reshape(-1).float()


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards [B*G] -> bool [B]: True where all G rewards of a prompt are equal (no learning signal)."""
    r = rewards.view(-1, group_size)
    return (r.max(dim=1).values - r.min(dim=1).values).abs() < 1e-8


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """lengths [N] -> float mask [N, max_len] with mask[i, t] = t < lengths[i].

    Built from lengths, never from token ids: with pad == eos an id-based mask silently drops the EOS token."""
    return (torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]).float()


LOG_RATIO_CLAMP = 20.0  # verl's guard: |log pi - log pi_old| and |log ref - log pi| are clamped before exp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per token [N, T]: exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased).
    The log-ratio is clamped to +-LOG_RATIO_CLAMP first (verl), so one far-off token cannot give inf."""
    d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1


def clipped_policy_loss(logp, old_logp, advantages, clip_low: float, clip_high: float):
    """logp, old_logp [N, T], advantages [N] -> (per-token loss [N, T], clipped [N, T] bool).

    loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)), ratio = exp(logp - old_logp), the
    log-ratio clamped to +-LOG_RATIO_CLAMP before exp (verl): with mu > 1 a token whose probability moved far
    would otherwise give ratio = inf (fp32 exp overflows at 88.7) and, with A < 0, an infinite loss."""
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    adv = advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def tis_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling for the sampler/trainer mismatch (TRL's vllm_importance_sampling_correction,
    verl's tis_imp_ratio_cap): old_logp (trainer), sampler_logp (vLLM) [N, T] -> weights [N, T] =
    min(exp(old_logp - sampler_logp), cap), constant (no gradient); the per-token policy loss is multiplied by it."""
    return torch.exp((old_logp - sampler_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).clamp(max=cap).detach()


def aggregate_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str, n_tokens_global: float | None = None,
                   n_seqs_global: float | None = None, constant: float | None = None) -> torch.Tensor:
    """Per-token loss [N, T] + mask [N, T] -> scalar, normalised so that summing over micro-batches and ranks gives
    the loss of the whole (global) batch:

      token_mean: sum(loss * mask) / n_tokens_global                 (DAPO; every token weighs the same)
      seq_mean:   sum_i (sum_t loss * mask / len_i) / n_seqs_global  (original GRPO)
      constant:   sum(loss * mask) / (n_seqs_global * constant)      (Dr. GRPO, constant = max completion length)
    The *_global defaults are this batch's own counts."""
    masked = loss * mask
    n_tokens_global = mask.sum().clamp(min=1) if n_tokens_global is None else n_tokens_global
    n_seqs_global = loss.shape[0] if n_seqs_global is None else n_seqs_global
    if mode == "token_mean":
        return masked.sum() / n_tokens_global
    if mode == "seq_mean":
        return (masked.sum(1) / mask.sum(1).clamp(min=1)).sum() / n_seqs_global
    if mode == "constant":
        assert constant, "constant aggregation needs the constant (max completion length)"
        return masked.sum() / (n_seqs_global * constant)
    raise ValueError(f"loss_agg must be token_mean | seq_mean | constant, got {mode!r}")


def parse_weights(s: str) -> dict | None:
    """'charge=1,format=0.5' -> {'charge': 1.0, 'format': 0.5}; '' -> None (defaults). A bad item is a DataError."""
    if not s.strip():
        return None
    out = {}
    for part in s.split(","):
        k, _, v = (x.strip() for x in part.partition("="))
        if k not in DEFAULT_REWARD_WEIGHTS:
            raise utils.DataError("--reward_weights", None, None, f"unknown component {k!r} (known: "
                                  f"{', '.join(DEFAULT_REWARD_WEIGHTS)})", reason="bad_flag")
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = float("nan")
        if not 0 <= out[k] < float("inf"):
            raise utils.DataError("--reward_weights", None, None, f"{part.strip()!r}: expected {k}=WEIGHT, a number "
                                  ">= 0", reason="bad_flag")
    if sum({**DEFAULT_REWARD_WEIGHTS, **out}.values()) <= 0:
        raise utils.DataError("--reward_weights", None, None, "all weights are 0", reason="bad_flag")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 2b. Rewards: legal_reward(completion, truth) scores the answer block (utils.parse_answer) per component in [0, 1]:
#   charge  - set F1 over canonical charge names;  article - set F1 over Criminal Law article numbers
#   term    - 1 - min(|log(p+1) - log(t+1)| / log(216), 1) on months (LawBench's shaping); 无期/死刑 are categories
#   format  - 1 well-formed (optional <think>..</think>, then <answer> with 罪名/法条/刑期, nothing trailing),
#             0.5 an answer block is there but something around it is off, 0 no closed answer block
# A missing or empty answer block scores 0 on every component.
# ----------------------------------------------------------------------------------------------------------------------

DEFAULT_REWARD_WEIGHTS = {"charge": 0.35, "article": 0.25, "term": 0.25, "format": 0.15}


def set_f1(pred, truth) -> float:
    """F1 between two sets; both empty -> 1.0 (callers gate on a present answer first)."""
    pred, truth = set(pred), set(truth)
    if not pred and not truth:
        return 1.0
    tp = len(pred & truth)
    if tp == 0:
        return 0.0
    p, r = tp / len(pred), tp / len(truth)
    return 2 * p * r / (p + r)


def term_score(pred: dict | None, truth: dict) -> float:
    """LawBench-style shaping: 1 - min(utils.log_distance / ln 216, 1); life/death must match exactly."""
    if pred is None:
        return 0.0
    t_cat = "death" if truth.get("death") else "life" if truth.get("life") else "months"
    p_cat = "death" if pred["death"] else "life" if pred["life"] else "months"
    if t_cat != p_cat:
        return 0.0
    if t_cat != "months":
        return 1.0
    return 1.0 - min(utils.log_distance(pred["term_months"], int(truth.get("term_months", 0))) / utils.LOG_216, 1.0)


def legal_reward(completion: str, truth: dict, weights: dict | None = None, charges=None) -> dict:
    """Score one completion against truth {charges, articles, term_months, life, death}.

    Returns {'charge', 'article', 'term', 'format', 'total'} (all in [0, 1]; total = weighted mean with `weights`,
    default DEFAULT_REWARD_WEIGHTS). legal_reward(format_answer(t), t)['total'] == 1."""
    w = {**DEFAULT_REWARD_WEIGHTS, **(weights or {})}
    ans = utils.parse_answer(completion, charges)
    if ans is None:
        r = {"charge": 0.0, "article": 0.0, "term": 0.0, "format": 0.0}
    else:
        truth_charges = [utils.norm_charge(c, charges) for c in truth["charges"]]
        r = {"charge": set_f1(ans["charges"], truth_charges) if ans["fields"]["罪名"] else 0.0,
             "article": set_f1(ans["articles"], [int(a) for a in truth["articles"]]) if ans["fields"]["法条"] else 0.0,
             "term": term_score(ans["term"], truth),
             "format": 1.0 if ans["well_formed"] else 0.5}
    total_w = sum(w[k] for k in r)
    r["total"] = sum(w[k] * r[k] for k in r) / total_w if total_w > 0 else 0.0
    return r


# ----------------------------------------------------------------------------------------------------------------------
# 3. Rollouts
# ----------------------------------------------------------------------------------------------------------------------

def load_prompts(path, tokenizer=None, budget: int = 2048, response_prefix: str = "") -> tuple[list[dict], int]:
    """rl_prompts.jsonl -> ([{'ids': prompt token ids (chat template + response_prefix), 'truth', 'prompt',
    'cut_chars'}], number of prompts cut). A prompt longer than `budget` tokens has the middle of its text cut
    (utils.fit_prompt: the chat template and the end of the instruction stay whole); one that cannot fit even so
    is a one-line error naming its line.

    Every record is checked here, so that a bad truth is a one-line DataError at load, not a crash inside the reward
    hours later: prompt a non-empty string; truth.charges a list of names (str); truth.articles a list of article
    numbers (int); truth.term_months (optional) a whole number of months >= 0; truth.life / truth.death (optional)
    true/false. tokenizer=None: check only (rl.py's preflight), nothing tokenized."""
    out, n, n_cut = [], 0, 0

    def render(text):
        return utils.render_prompt(tokenizer, text, response_prefix=response_prefix)

    for line, rec in utils.iter_records(path):
        n += 1
        prompt = utils.require(rec, "prompt", path, line)
        truth = utils.require(rec, "truth", path, line, kind=dict)
        charges = utils.require(rec, "truth.charges", path, line, kind=list, allow_empty=True)
        articles = utils.require(rec, "truth.articles", path, line, kind=list, allow_empty=True)
        if not all(isinstance(c, str) and c.strip() for c in charges):
            raise utils.DataError(path, line, "truth.charges", f"expected a list of charge names (str), got "
                                  f"{charges!r}"[:300], reason="bad_field")
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in articles):
            raise utils.DataError(path, line, "truth.articles", f"expected a list of article numbers (int), got "
                                  f"{articles!r}"[:300], reason="bad_field")
        term = truth.get("term_months", 0)
        if not isinstance(term, int) or isinstance(term, bool) or term < 0:
            raise utils.DataError(path, line, "truth.term_months", f"expected a whole number of months >= 0, got "
                                  f"{term!r}", reason="bad_field")
        for k in ("life", "death"):
            if not isinstance(truth.get(k, False), bool):
                raise utils.DataError(path, line, f"truth.{k}", f"expected true or false, got {truth[k]!r}",
                                      reason="bad_field")
        if tokenizer is None:
            continue
        fit = utils.fit_prompt(tokenizer, render, prompt, budget)
        if fit is None:
            raise utils.DataError(path, line, "prompt", f"does not fit the prompt budget of {budget} tokens even "
                                  "with its text cut (raise --max_prompt_tokens or lower --max_new_tokens)",
                                  reason="too_long")
        text, removed = fit
        n_cut += removed > 0
        ids = tokenizer(render(text), add_special_tokens=False)["input_ids"]
        out.append({"ids": ids, "truth": truth, "prompt": prompt, "cut_chars": removed})
    if not n:
        raise utils.DataError(path, None, None, "no prompts", reason="empty_file")
    return out, n_cut


@dataclass
class Completion:
    """One sampled completion: its token ids (through the first EOS), the sampler's log-probs of them (vLLM; None
    for HF generate) and whether it hit max_new_tokens."""
    ids: list[int]
    sampler_logp: list[float] | None
    truncated: bool


class HFRollout:
    """Rollouts with transformers generate on the trainer's own (FSDP2-sharded) policy: no weight sync needed.
    Generation runs inside the root module's forward (PolicyLM), so the root's own parameters are gathered for it;
    the decoder blocks stay gathered for the whole call (full weights on every rank while generating, as a colocated
    vLLM engine holds them too); with several ranks `synced_gpus` keeps every rank stepping until all finish.
    The trainer's forward is padding-free (packed attention); generate needs a KV cache and a padding mask, so the
    model runs with sdpa attention for the call and switches back."""

    def __init__(self, model, tokenizer, cfg: RLConfig):
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self.eos = utils.stop_token_ids(cfg.model, tokenizer)  # eos and the chat template's end of turn

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int, generator_seed: int):
        """-> [Completion] over prompts x n (the n of a prompt consecutive)."""
        cfg, dev = self.cfg, self.model.device
        flat = [p for p in prompt_ids for _ in range(n)]
        width = max(map(len, flat))
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in flat], device=dev)  # left padding
        attn = length_mask(torch.tensor([len(p) for p in flat]), width).flip(1).long().to(dev)
        torch.manual_seed(generator_seed)
        was_training = self.model.training
        self.model.eval()
        blocks = utils.decoder_blocks(self.model)
        for b in blocks:  # gather each block once for the whole decode, not once per generated token
            b.set_reshard_after_forward(False)
        attn_impl = self.model.hf.config._attn_implementation
        self.model.hf.set_attn_implementation("sdpa")
        try:
            out = self.model(ids, attention_mask=attn, generate=dict(
                do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, eos_token_id=self.eos,
                synced_gpus=utils.dist_info().world > 1))
        finally:
            self.model.hf.set_attn_implementation(attn_impl)
            for b in blocks:
                b.set_reshard_after_forward(True)
                b.reshard()
        self.model.train(was_training)
        rows = out[:, width:].tolist()  # one device-to-host copy for the whole batch
        cut = [utils.until_stop(row, self.eos, keep_stop=True) for row in rows]  # EOS kept: the policy learns to stop
        return [Completion(ids, None, truncated) for ids, truncated in cut]

    def sleep(self) -> float:
        return 0.0

    def sync(self, model):
        return 0.0

    def close(self):
        pass


class VLLMWeightSync:
    """vLLM worker extension (worker_extension_cls='rl.VLLMWeightSync'): load trainer weights in place.
    `named_tensors` may be a generator: vLLM's load_weights consumes it one tensor at a time."""

    def lexlab_load_weights(self, named_tensors):
        self.reload_weights(weights_iterator=iter(named_tensors))


def stream_weights(model: nn.Module, dtype: torch.dtype, device):
    """Yield (Hugging Face name, full tensor in `dtype` on `device`) one parameter at a time: each FSDP2 shard is
    all-gathered (full_tensor, a collective every rank joins in the same order), cast to the engine's dtype and
    handed over; the consumer loads it and drops it before the next one is gathered. Peak extra memory: the
    largest single tensor, not the full fp32 state dict (TRL's _sync_fsdp2_params_to_vllm does the same)."""
    from torch.distributed.tensor import DTensor
    for name, v in model.state_dict().items():
        # the SHARD is cast (and, with cpu_offload, moved to the compute device) before the all-gather: half the bytes
        # on the wire and no full fp32 copy (2.2 GB for a 7B model's 152k x 3584 embedding) next to the bf16 one
        v = v.detach().to(device=device, dtype=dtype)
        full = v.full_tensor() if isinstance(v, DTensor) else v
        yield name.removeprefix("hf."), full
        del full, v


class VLLMRollout:
    """Colocated vLLM engine, one per rank (utils.vllm_llm_kwargs: external_launcher under torchrun, each rank's
    engine on its own device); weights streamed in after every optimizer step, then the prefix cache reset. On GPU
    the engine sleeps (level 2: weights and KV cache freed) between generation and the next push. Engine settings
    of its own: bfloat16 on GPU whatever the trainer's master dtype (fp32 stays in the trainer), CUDA graphs (eager
    only on CPU), a seed per rank (the per-request seeds add the step), the sampler's log-probs after temperature
    (processed_logprobs: what the trainer scores, so the logged mismatch and --tis_cap compare like with like)."""

    def __init__(self, cfg: RLConfig, rank: int, world: int, max_model_len: int, device):
        self.cfg, self.device = cfg, device
        cuda = device.type == "cuda"
        dtype = cfg.vllm_dtype if cfg.vllm_dtype != "auto" else ("bfloat16" if cuda else cfg.dtype)
        self.kwargs = utils.vllm_llm_kwargs(
            cfg.model, cfg.seed + rank, max_model_len, cfg.vllm_kv_bytes, not cuda, dtype, cuda,
            cfg.gpu_memory_utilization, world_size=world, sleep_mode=cfg.vllm_sleep,
            worker_extension_cls="rl.VLLMWeightSync", logprobs_mode="processed_logprobs")
        self.dtype = getattr(torch, self.kwargs["dtype"])
        self.sleeps = bool(self.kwargs.get("enable_sleep_mode"))
        self.asleep = False
        self.llm = utils.start_vllm(self.kwargs)
        self.eos = utils.stop_token_ids(cfg.model)  # eos and the chat template's end of turn (<|im_end|>)

    def generate(self, prompt_ids, n: int, generator_seed: int):
        from vllm import SamplingParams
        cfg = self.cfg
        sp = SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k if cfg.top_k > 0 else -1,
                            max_tokens=cfg.max_new_tokens, logprobs=0, seed=generator_seed, stop_token_ids=self.eos)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], sp, use_tqdm=False)
        res = []
        for o in outs:
            for c in o.outputs:
                ids = list(c.token_ids)
                lps = [d[t].logprob for d, t in zip(c.logprobs, ids)] if c.logprobs else None
                res.append(Completion(ids, lps, c.finish_reason == "length"))
        return res

    def sleep(self) -> float:
        """After generation: free the engine's weights and KV cache for the trainer (GPU). Returns GiB freed."""
        if not self.sleeps or self.asleep:
            return 0.0
        free0 = torch.cuda.mem_get_info()[0]
        self.llm.sleep(level=2)  # level 2: weights discarded too (the push reloads all of them)
        self.asleep = True
        return (torch.cuda.mem_get_info()[0] - free0) / 2 ** 30

    def sync(self, model) -> float:
        """Stream the trainer's weights into this rank's engine (stream_weights); returns seconds taken. Every rank
        joins the all-gathers (every rank has its own engine). Wakes the weights first and the KV cache after, so the
        two never sit next to a full extra copy."""
        t0 = time.time()
        if self.asleep:
            torch.cuda.empty_cache()  # the trainer's freed blocks back to the driver first (TRL: "to avoid OOM")
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("lexlab_load_weights", args=(stream_weights(model, self.dtype, self.device),))
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()
        return time.time() - t0

    def close(self):
        utils.shutdown_vllm(self.llm)  # now, while the trainer's process groups are up


# ----------------------------------------------------------------------------------------------------------------------
# 4. Trainer: FSDP2 with the shared pieces of utils section 9 (as sft.py)
# ----------------------------------------------------------------------------------------------------------------------
# FSDP2 AVERAGES gradients over ranks when it reduce-scatters them. The losses here are already divided by GLOBAL
# counts (tokens / sequences all-reduced), so the global loss is the SUM of the ranks' losses: each rank
# backpropagates its loss times world_size (gloo lacks PREMUL_SUM, so set_gradient_divide_factor(1.0) is no option
# on CPU; same correction as sft.train_step).
# The forward is padding-free: the rows of a micro-batch (prompt + completion each) are laid end to end in one
# sequence with per-row positions, and utils' packed attention (flash varlen on GPU, exact per-row sdpa on CPU)
# keeps them apart, as in sft.py (and TRL's / verl's padding-free trainers). Log-probs come from
# utils.chunked_token_logprobs on the completion positions only, at the sampling temperature.
# Every collective is utils.all_reduce (on the process group's device: NCCL has no CPU tensors).


class PolicyLM(nn.Module):
    """The Hugging Face causal LM under one root module, so that FSDP2's root owns the embeddings, final norm and
    lm_head (like sft.PackedCausalLM; checkpoint keys get the `hf.` prefix).

    forward(input_ids [1, S], position_ids [1, S], cu_seqlens, gather [K], tokens [K]) -> (log-probs [K], entropy
    [K]) of the K completion tokens of a packed micro-batch (pack_rows): hidden state gather[k] predicts tokens[k];
    lm_head runs on those K positions only, in chunks, on logits / temperature (utils.chunked_token_logprobs, the
    lm-head of sft.PackedCausalLM too; why two wrappers: see there).
    forward(input_ids, attention_mask=..., generate=kwargs) -> HF generate's output ids, run inside the root's forward
    where the root's parameters are gathered (calling hf.generate directly would meet sharded embeddings and make
    a decoder block the FSDP root)."""

    def __init__(self, hf_model, device=torch.device("cpu"), temperature: float = 1.0, chunk: int = 4096):
        super().__init__()
        self.hf, self.device, self.temperature, self.chunk = hf_model, device, temperature, chunk
        self.backend = utils.pick_attention_backend(device)

    def forward(self, input_ids, position_ids=None, cu_seqlens=None, gather=None, tokens=None, attention_mask=None,
                generate: dict | None = None, entropy: bool = True):
        if generate is not None:
            return self.hf.generate(input_ids=input_ids, attention_mask=attention_mask, **generate)
        hidden = utils.packed_hidden(self.hf, input_ids, position_ids, cu_seqlens, self.backend)
        return utils.chunked_token_logprobs(hidden[0, gather], self.hf.lm_head.weight, tokens, self.temperature,
                                            self.chunk, entropy=entropy)


def build_policy(path, dtype: str, device, hybrid_shard: bool = False, cpu_offload: bool = False,
                 trainable: bool = True, activation_checkpointing: bool = False, temperature: float = 1.0,
                 chunk: int = 4096) -> PolicyLM:
    """PolicyLM on `device`, FSDP2-sharded (every decoder block, then the root; bf16 compute on GPU), built on the
    meta device and loaded once by rank 0, which broadcasts the weights shard by shard (utils.load_sharded_model,
    as sft.py): no rank but 0 ever holds the full model in host RAM. trainable=False gives the frozen reference:
    sharded the same way (no full copy per rank), eval mode."""
    model, _ = utils.load_sharded_model(
        path, device, wrap=lambda hf: PolicyLM(hf, device, temperature, chunk), dtype=getattr(torch, dtype),
        hybrid_shard=hybrid_shard, cpu_offload=cpu_offload, trainable=trainable,
        activation_checkpointing=activation_checkpointing and trainable)
    return model


def build_batch(prompt_ids: list[list[int]], completions: list[list[int]], pad_id: int):
    """Rollouts -> dict(seqs: N lists prompt + completion, tokens [N, Tc] (right-padded with pad_id), lengths [N],
    start [N]) where tokens[i, :lengths[i]] is completion i and seqs[i][start[i]:] the same ids."""
    n = len(completions)
    lengths = torch.tensor([len(c) for c in completions])
    Tc = max(1, int(lengths.max()))
    tokens = torch.full((n, Tc), pad_id, dtype=torch.long)
    for i, c in enumerate(completions):
        tokens[i, :len(c)] = torch.tensor(c, dtype=torch.long) if c else tokens[i, :0]
    return {"seqs": [list(p) + list(c) for p, c in zip(prompt_ids, completions)], "tokens": tokens,
            "lengths": lengths, "start": torch.tensor([len(p) for p in prompt_ids])}


def pack_rows(batch: dict, rows: list[int]) -> dict:
    """Rows of a batch laid end to end, padding-free: input_ids / position_ids [1, S] (positions restart per row),
    cu_seqlens [0, len_0, len_0 + len_1, ..., S] (python ints), gather [K] (packed position of the hidden state
    that predicts each completion token: row offset + start - 1 + j), tokens [K], index [K] (= row_in_mb * Tc + j,
    where each value goes in the [len(rows), Tc] result)."""
    Tc = batch["tokens"].shape[1]
    ids, pos, cu, gather, index = [], [], [0], [], []
    for r_i, r in enumerate(rows):
        seq, s, n = batch["seqs"][r], int(batch["start"][r]), int(batch["lengths"][r])
        off = cu[-1]
        ids += seq
        pos += range(len(seq))
        cu.append(off + len(seq))
        gather += range(off + s - 1, off + s - 1 + n)
        index += range(r_i * Tc, r_i * Tc + n)
    tokens = batch["tokens"][rows][:, :Tc][length_mask(batch["lengths"][rows], Tc).bool()]  # completion tokens only
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "cu_seqlens": cu,
            "gather": torch.tensor(gather, dtype=torch.long), "tokens": tokens,
            "index": torch.tensor(index, dtype=torch.long)}


def completion_logprobs(model: PolicyLM, batch: dict, rows, entropy: bool = True):
    """Log-probs and entropy [n, Tc] (0 after each completion) of the completion tokens of batch rows `rows` (a list
    or a slice) under `model`, in one packed forward. entropy=False (the old / reference passes): None, not computed."""
    rows = list(range(batch["tokens"].shape[0]))[rows] if isinstance(rows, slice) else list(rows)
    p = pack_rows(batch, rows)
    ids, pos, gather, tokens, idx = (utils.to_device(p[k], model.device)
                                     for k in ("input_ids", "position_ids", "gather", "tokens", "index"))
    logp, ent = model(ids, pos, p["cu_seqlens"], gather, tokens, entropy=entropy)
    n, Tc = len(rows), batch["tokens"].shape[1]

    def spread(x):  # [K] -> [n, Tc]
        return x.new_zeros(n * Tc).index_add(0, idx, x).view(n, Tc)
    return spread(logp), (spread(ent) if entropy else None)


def micro_batches(seq_lengths: list[int], micro_batch: int, max_tokens: int = 0) -> list[list[int]]:
    """Rows in order -> micro-batches of at most `micro_batch` rows and, when max_tokens > 0, at most `max_tokens`
    packed tokens (a row longer than that on its own)."""
    out, cur, tok = [], [], 0
    for i, n in enumerate(seq_lengths):
        if cur and (len(cur) >= micro_batch or (max_tokens and tok + n > max_tokens)):
            out.append(cur)
            cur, tok = [], 0
        cur.append(i)
        tok += n
    return out + [cur] if cur else out


def aligned_micro_batches(batch: dict, micro_batch: int, max_tokens: int) -> list[list[int]]:
    """micro_batches, padded with empty ones to the largest count over ranks: FSDP2's forwards and backwards are
    collectives, so every rank must run as many (an empty micro-batch runs row 0 with weight 0)."""
    mbs = micro_batches([len(s) for s in batch["seqs"]], micro_batch, max_tokens)
    n = int(utils.all_reduce(torch.tensor([len(mbs)]), "max").item())
    return mbs + [[] for _ in range(n - len(mbs))]


@torch.no_grad()
def batch_logprobs(model: PolicyLM, batch: dict, micro_batch: int, max_tokens: int = 0) -> torch.Tensor:
    """Old / reference log-probs [N, Tc] (on CPU: one device-to-host copy at the end, not one per micro-batch)."""
    out = torch.zeros(batch["tokens"].shape, device=model.device)
    for rows in aligned_micro_batches(batch, micro_batch, max_tokens):
        lp = completion_logprobs(model, batch, rows or [0], entropy=False)[0]
        if rows:
            out[rows] = lp
    return out.cpu()


def train_on_batch(model: PolicyLM, optimizer, batch: dict, advantages, old_logp, ref_logp, mask,
                   cfg: RLConfig, sampler_logp=None, step: int = 1) -> dict:
    """One optimizer step on this rank's share of the rollout batch. Normalisers are global across ranks, so the
    sum over ranks of the per-rank losses is the loss of the whole global batch; each rank backpropagates its loss
    times world_size because FSDP2 averages the gradients (see the section comment). sampler_logp [N, Tc] (vLLM's
    log-probs) with cfg.tis_cap > 0: the per-token loss is weighted by tis_weights. step (1-based) names the step
    in the error of a non-finite loss or gradient norm (utils.check_finite), raised before the optimizer step."""
    world = utils.dist_info().world
    dev = model.device
    # the step's per-row tensors [N, Tc] go to the device once (a few MB), not as slices in every micro-batch
    mask, old_logp, advantages = mask.to(dev), old_logp.to(dev), advantages.to(dev)
    ref_logp = ref_logp.to(dev) if ref_logp is not None else None
    tis = tis_weights(old_logp, sampler_logp.to(dev), cfg.tis_cap) if sampler_logp is not None and cfg.tis_cap > 0 \
        else None
    n_tokens = utils.all_reduce(mask.sum()).item()
    n_seqs = utils.all_reduce(torch.tensor(float(mask.shape[0]))).item()
    stats = torch.zeros(5, device=dev)  # loss, kl*mask, clipped*mask, entropy*mask, tokens
    optimizer.zero_grad(set_to_none=True)
    mbs = aligned_micro_batches(batch, cfg.micro_batch_size, cfg.micro_batch_tokens)
    for rows in mbs:  # gradients are reduce-scattered after every micro-batch: only sharded gradients are kept
        weight = 1.0 if rows else 0.0  # an empty micro-batch (rank alignment): row 0, no contribution
        rows = rows or [0]
        idx = torch.tensor(rows, device=dev)  # the micro-batch's one host-to-device copy besides its tokens
        m = mask[idx] * weight
        logp, ent = completion_logprobs(model, batch, rows)
        loss_tok, clipped = clipped_policy_loss(logp, old_logp[idx], advantages[idx], cfg.clip_low, cfg.clip_high)
        if tis is not None:
            loss_tok = loss_tok * tis[idx]
        kl = kl_k3(logp, ref_logp[idx]) if ref_logp is not None else torch.zeros_like(logp)
        if cfg.beta > 0:
            loss_tok = loss_tok + cfg.beta * kl
        loss = aggregate_loss(loss_tok, m, cfg.loss_agg, n_tokens_global=max(n_tokens, 1.0), n_seqs_global=n_seqs,
                              constant=cfg.max_new_tokens)
        (loss * world).backward()
        stats += torch.stack([loss.detach(), (kl.detach() * m).sum(), (clipped.float() * m).sum(),
                              (ent.detach() * m).sum(), m.sum()])
    gnorm = utils.clip_grad_norm(model, cfg.max_grad_norm or float("inf"))
    stats = utils.all_reduce(stats).cpu()
    utils.check_finite(step, stats[0].item(), gnorm)  # a diverged run stops before the weights change
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # gradients freed before the weight push and the next generation
    tok = max(stats[4].item(), 1.0)
    return {"loss": stats[0].item(), "kl": stats[1].item() / tok, "clip_frac": stats[2].item() / tok,
            "entropy": stats[3].item() / tok, "grad_norm": gnorm}


# ----------------------------------------------------------------------------------------------------------------------
# 4b. Memory plan: trainer + colocated engine per GPU (utils section 9b), the automatic defaults read off it
# ----------------------------------------------------------------------------------------------------------------------

def row_tokens(cfg: RLConfig, hf_config) -> int:
    """The longest packed row: prompt budget + max_new_tokens (within the model's context)."""
    ctx = getattr(hf_config, "max_position_embeddings", None) or cfg.max_prompt_tokens + cfg.max_new_tokens
    return min(cfg.max_prompt_tokens + cfg.max_new_tokens, ctx)


def rl_plan(hf_config, cfg: RLConfig, world: int, gpu_gb: float | None, **changes) -> dict:
    """utils.rl_memory_plan for cfg (with `changes`); auto values must be resolved. The engine's share is
    gpu_memory_utilization x gpu_gb (unset: exactly what it needs)."""
    c = dataclasses.replace(cfg, **changes)
    row = row_tokens(c, hf_config)
    cap = min(c.micro_batch_tokens or c.micro_batch_size * row, c.micro_batch_size * row)
    engine = utils.engine_plan(hf_config, c.prompts_per_step * c.group_size * row,
                               4 if c.vllm_dtype == "float32" else 2) if c.backend == "vllm" else None
    share = (int(c.gpu_memory_utilization * gpu_gb * utils.GIB) if c.gpu_memory_utilization and gpu_gb
             else engine["need"] if engine else 0)
    # ranks per node: torchrun's when the world comes from it; a dry run's --world_size plans full nodes of 8
    local = None if cfg.world_size else utils.dist_info().local_world
    p = utils.rl_memory_plan(hf_config, world, cap, c.activation_checkpointing in (True, "true"), c.logprob_chunk,
                             4 if c.dtype == "float32" else 2, c.beta > 0, c.cpu_offload, c.hybrid_shard, local,
                             engine, share, c.vllm_sleep)
    p.update(row_tokens=row, micro_batch_tokens=cap, engine_detail=engine,
             engine_short=bool(engine) and share < engine["need"])
    return p


def plan_run(cfg: RLConfig, hf_config, world: int, gpu_gb: float | None):
    """-> (cfg with activation_checkpointing, micro_batch_tokens and gpu_memory_utilization resolved, plan, table,
    flags that would fit or None, fits). On GPU (gpu_gb): the engine's share = what it needs; checkpointing on when
    --micro_batch_size rows do not fit AUTO_TARGET without it; the token cap the largest that fits AUTO_TARGET
    (at least one row). On CPU: checkpointing off, no token cap."""
    how = {}
    row = row_tokens(cfg, hf_config)
    rows_cap = cfg.micro_batch_size * row
    if gpu_gb is None:
        ac = "true" if cfg.activation_checkpointing in (True, "true") else "false"
        cfg = dataclasses.replace(cfg, activation_checkpointing=ac, micro_batch_tokens=cfg.micro_batch_tokens or 0)
    else:
        if cfg.gpu_memory_utilization is None and cfg.backend == "vllm":
            need = utils.engine_plan(hf_config, cfg.prompts_per_step * cfg.group_size * row,
                                     4 if cfg.vllm_dtype == "float32" else 2)["need"]
            cfg = dataclasses.replace(cfg, gpu_memory_utilization=min(0.95, math.ceil(need / (gpu_gb * utils.GIB)
                                                                                         * 100) / 100))
            how["gpu_memory_utilization"] = "auto"

        def ok(**ch):
            return utils.fits(rl_plan(hf_config, cfg, world, gpu_gb, **ch)["total"], gpu_gb, utils.AUTO_TARGET)
        if cfg.activation_checkpointing not in (True, False, "true", "false"):
            fixed_cap = cfg.micro_batch_tokens or rows_cap
            cfg = dataclasses.replace(cfg, activation_checkpointing="false" if ok(
                activation_checkpointing="false", micro_batch_tokens=fixed_cap) else "true")
            how["activation_checkpointing"] = "auto"
        if cfg.micro_batch_tokens is None:
            lo, hi = row, rows_cap
            if ok(micro_batch_tokens=hi):
                lo = hi
            while hi - lo > 256:  # the largest cap that fits (a row is never split: at least one row)
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if ok(micro_batch_tokens=mid) else (lo, mid)
            cfg = dataclasses.replace(cfg, micro_batch_tokens=lo)
            how["micro_batch_tokens"] = "auto"
    gb = gpu_gb or 0
    plan = rl_plan(hf_config, cfg, world, gpu_gb)
    fits = gpu_gb is not None and utils.fits(plan["total"], gpu_gb) and not plan["engine_short"]
    fix = None
    if gpu_gb is not None and not fits:
        t = {"activation_checkpointing": True, "micro_batch_tokens": row}
        o = {**t, "cpu_offload": True}
        cands = [t, {**t, "logprob_chunk": 1024}, {**t, "vllm_sleep": True}, o, {**o, "logprob_chunk": 1024}]
        if plan["engine_short"]:
            cands = [{"gpu_memory_utilization": min(0.95, math.ceil(plan["engine_detail"]["need"] / (gpu_gb * utils.GIB)
                                                                       * 100) / 100)}]
        fix = utils.first_fit(lambda ch: not rl_plan(hf_config, cfg, world, gpu_gb, **ch)["engine_short"] and
                              utils.fits(rl_plan(hf_config, cfg, world, gpu_gb, **ch)["total"], gpu_gb), cands)
    g = utils.GIB
    rows = utils.plan_rows(plan) + [("reference", plan["reference"], "frozen reference's shards (--beta > 0)")]
    e = plan["engine_detail"]
    if e:
        share = "its needs (no GPU)" if cfg.gpu_memory_utilization is None else \
            f"gpu_memory_utilization {cfg.gpu_memory_utilization:g}{' (auto)' if 'gpu_memory_utilization' in how else ''}"
        rows.append(("engine", plan["engine"], f"vLLM awake: {share}"))
    notes = []
    if e:
        notes.append(f"engine needs {e['need'] / g:.1f} GiB: bf16 weights {e['weights'] / g:.1f} + KV cache "
                     f"{e['kv'] / g:.1f} ({cfg.prompts_per_step} prompts x {cfg.group_size} x {row} tokens) + "
                     f"overhead {e['overhead'] / g:.1f}" + ("  <- MORE than its share" if plan["engine_short"] else ""))
    notes += [f"phase generate: {plan['phase_generate'] / g:.1f} GiB (trainer params + optimizer, gradients freed, "
              f"+ reference + engine awake)",
              f"phase train:    {plan['phase_train'] / g:.1f} GiB (trainer rows above + reference + engine "
              f"{'asleep: overhead only' if cfg.vllm_sleep else 'awake (--vllm_sleep false)'})"
              if e else f"phase train:    {plan['phase_train'] / g:.1f} GiB"]
    notes += [f"flags that fit: {fix}"] if fix else []
    header = (f"memory plan: {cfg.model} ({plan['n_params'] / 1e9:.2f}B params), {world} GPUs, GRPO "
              f"{cfg.prompts_per_step} prompts x {cfg.group_size} completions x {row} tokens per rank, backend "
              f"{cfg.backend}, micro-batch <= {cfg.micro_batch_size} rows and {plan['micro_batch_tokens']} tokens"
              f"{' (auto)' if 'micro_batch_tokens' in how else ''}, activation_checkpointing "
              f"{cfg.activation_checkpointing}{' (auto)' if 'activation_checkpointing' in how else ''}, cpu_offload "
              f"{str(cfg.cpu_offload).lower()}, vllm_sleep {str(cfg.vllm_sleep).lower()}, {cfg.dtype} master weights")
    table = utils.format_plan(rows, plan["total"], gb, header, notes, host=plan,
                              ok=None if not plan["engine_short"] else False)
    return cfg, plan, table, fix, fits


def dry_run(cfg: RLConfig) -> dict:
    """Print the plan per GPU (trainer + colocated engine) from --model's config.json and return it."""
    from transformers import AutoConfig
    utils.check_model_dir(cfg.model, weights=False, tokenizer=False)  # --dry_run needs only config.json
    world = cfg.world_size or utils.dist_info().world
    _, plan, table, _, _ = plan_run(cfg, AutoConfig.from_pretrained(cfg.model), world, cfg.gpu_memory_gb or 80.0)
    print(table, flush=True)
    return plan


def plan_or_refuse(cfg: RLConfig, world: int, device) -> RLConfig:
    """A real run's plan before any weight is loaded: auto values resolved (returned in cfg); on GPU a plan that
    does not fit stops the run with the table and the flags that would fit (exit 2)."""
    from transformers import AutoConfig
    gpu_gb = utils.device_memory_gb(device, cfg.gpu_memory_gb)
    cfg, plan, table, fix, fits = plan_run(cfg, AutoConfig.from_pretrained(cfg.model), world, gpu_gb)
    if gpu_gb is not None:
        if not fits:
            utils.refuse_plan("rl.py", table, fix, gpu_gb)
        utils.check_host_ram("rl.py", table, plan)
        utils.print0(f"rl.py: memory plan {plan['total'] / utils.GIB:.1f} of {gpu_gb:.1f} GiB per GPU; "
                     f"activation_checkpointing {cfg.activation_checkpointing}, micro_batch_tokens "
                     f"{cfg.micro_batch_tokens}, gpu_memory_utilization {cfg.gpu_memory_utilization}")
    return cfg


# ----------------------------------------------------------------------------------------------------------------------
# 5. Loop: one step = rollout -> score -> advantages -> optimise -> push -> log -> save (as sft.py's)
# ----------------------------------------------------------------------------------------------------------------------

def take_prompts(order: list[int], sampler: random.Random, n_prompts: int, n: int) -> list[int]:
    """The next n indices of the global prompt order (one shuffle per pass, the same on every rank), removed from
    `order` (saved with checkpoints, as the sampler's state)."""
    while len(order) < n:
        perm = list(range(n_prompts))
        sampler.shuffle(perm)
        order += perm
    picked = order[:n]
    del order[:n]
    return picked


def sampler_logprobs(comps: list[Completion], shape) -> torch.Tensor | None:
    """The sampler's log-probs [N, Tc] (0 after each completion); None when it reports none (HF generate)."""
    if not comps or comps[0].sampler_logp is None:
        return None
    out = torch.zeros(shape)
    for i, c in enumerate(comps):
        out[i, :len(c.sampler_logp)] = torch.tensor(c.sampler_logp)
    return out


def mean_over_ranks(values: dict) -> dict:
    """{name: this rank's number} -> {name: the mean over ranks}, one all-reduce (float32)."""
    t = utils.all_reduce(torch.tensor(list(values.values()))).cpu() / utils.dist_info().world
    return dict(zip(values, t.tolist()))


def advantages_and_batch(mine: list[dict], comps: list[Completion], rewards, cfg: RLConfig, pad_id: int):
    """-> (batch: build_batch over the P*G prompt + completion rows, advantages [P*G] (per group, so per rank), loss
    mask [P*G, Tc] (dynamic sampling and --mask_truncated take rows out of the loss), zero_var [P] bool)."""
    G = cfg.group_size
    adv, zero_var = group_advantages(rewards, G, cfg.scale_std), zero_variance_groups(rewards, G)
    truncated = torch.tensor([c.truncated for c in comps])
    batch = build_batch([p["ids"] for p in mine for _ in range(G)], [c.ids for c in comps], pad_id)
    mask = length_mask(batch["lengths"], batch["tokens"].shape[1])
    if cfg.dynamic_sampling:
        mask = mask * (~zero_var.repeat_interleave(G))[:, None].float()
    if cfg.mask_truncated:
        mask = mask * (~truncated)[:, None].float()
    return batch, adv, mask, zero_var


def optimise(model: PolicyLM, ref: PolicyLM | None, optimizer, batch: dict, adv, mask, comps: list[Completion],
             cfg: RLConfig, step: int):
    """Old (and reference) log-probs recomputed by the trainer, then --mu epochs of train_on_batch (step 0-based) ->
    (the last epoch's stats, old_logp [N, Tc], sampler log-probs [N, Tc] or None, seconds {t_logprobs, t_train})."""
    t0 = time.time()
    old_logp = batch_logprobs(model, batch, cfg.micro_batch_size, cfg.micro_batch_tokens)
    ref_logp = batch_logprobs(ref, batch, cfg.micro_batch_size, cfg.micro_batch_tokens) if ref is not None else None
    t_logp = time.time() - t0
    vllm_logp = sampler_logprobs(comps, old_logp.shape)
    t0 = time.time()
    for _ in range(cfg.mu):
        stats = train_on_batch(model, optimizer, batch, adv, old_logp, ref_logp, mask, cfg, vllm_logp, step + 1)
    return stats, old_logp, vllm_logp, {"t_logprobs": t_logp, "t_train": time.time() - t0}


def step_metrics(step: int, scores: list[dict], zero_var, batch: dict, comps: list[Completion], old_logp, vllm_logp,
                 stats: dict, seconds: dict, cfg: RLConfig, world: int, device) -> dict:
    """A step's metrics.jsonl row: rollout numbers as means over ranks (dropped_groups, rollout_tok_s: sums);
    no_learning_signal when every group on every rank had equal rewards (every advantage 0); the vLLM vs trainer
    log-prob gap on completion tokens (None for HF generate); the update's stats, seconds and peak memory."""
    P = cfg.prompts_per_step
    truncated = torch.tensor([c.truncated for c in comps])
    means = {k: torch.tensor([s[k] for s in scores]).mean().item() for k in scores[0]}
    row = {"step": step + 1, **mean_over_ranks({
        "reward": means.pop("total"), **{f"reward_{k}": v for k, v in means.items()},
        "zero_var_frac": zero_var.float().mean().item(), "completion_len": batch["lengths"].float().mean().item(),
        "truncated_frac": truncated.float().mean().item(),
        "dropped_groups": float(zero_var.sum().item()) if cfg.dynamic_sampling else 0.0,
        "rollout_tok_s": sum(len(c.ids) for c in comps) / max(seconds["t_rollout"], 1e-9)})}
    row["dropped_groups"] *= world
    row["rollout_tok_s"] *= world
    row["equal_reward_groups"] = round(row["zero_var_frac"] * P * world)
    row["no_learning_signal"] = row["equal_reward_groups"] == P * world
    diff = None
    if vllm_logp is not None:
        lm = length_mask(batch["lengths"], vllm_logp.shape[1])
        diff = (vllm_logp - old_logp).abs() * lm
    row.update({"logprob_diff_vllm": None if diff is None else diff.sum().item() / max(lm.sum().item(), 1),
                "logprob_diff_vllm_max": None if diff is None else diff.max().item(), **stats, **seconds,
                "peak_mem_gb": utils.peak_memory_gb(device),
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20})
    return row


def write_step(out: Path, row: dict, mine: list[dict], texts: list[str], scores: list[dict], cfg: RLConfig,
               first_no_signal: bool) -> None:
    """Rank 0 logs a step: its metrics.jsonl row, the console line every --log_every steps, a warning at the first
    step without learning signal, and every --sample_every steps each prompt's first completion in samples.jsonl
    (with the whole prompt and the gold truth: judged on its own)."""
    from tqdm import tqdm
    step, G = row["step"], cfg.group_size
    utils.append_jsonl(out / "metrics.jsonl", row)
    if first_no_signal:
        tqdm.write(f"rl.py: warning: step {step}: all {row['equal_reward_groups']} groups have equal rewards (no "
                   "learning signal: every advantage is 0); counted per step as no_learning_signal in metrics.jsonl")
    if cfg.log_every and step % cfg.log_every == 0:
        tqdm.write(f"step {step} reward {row['reward']:.3f} kl {row['kl']:.4f} "
                   f"clip {row['clip_frac']:.3f} len {row['completion_len']:.1f} {row['step_time']:.2f}s")
    if cfg.sample_every and step % cfg.sample_every == 0:
        for j in range(0, len(texts), G):
            p = mine[j // G]
            utils.append_jsonl(out / "samples.jsonl", {"step": step, "prompt": p["prompt"], "truth": p["truth"],
                                                       "completion": texts[j], "reward": scores[j]})


def train(cfg: RLConfig, device, reward_fn=None) -> Path:
    """GRPO in an initialised process group (main: torchrun or a world of one; tests: conftest.world_of_one);
    returns OUT. reward_fn(completion_text, truth) -> dict with 'total' (default legal_reward)."""
    from tqdm import tqdm
    rank, _, world, _ = utils.dist_info()
    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    cfg = plan_or_refuse(cfg, world, device)  # before any weight is loaded; auto defaults resolved
    identity = utils.run_identity(cfg, RUN_SETTINGS, {"model_fingerprint": utils.fingerprint(cfg.model),
                                                      "prompts_fingerprint": utils.fingerprint(cfg.prompts),
                                                      "optimizer": OPTIMIZER})
    utils.prepare_run_dir(out, identity, cfg.resume == "auto", cfg.overwrite, RUN_OUTPUTS, ckpt_dir=ckpt_root)
    if rank == 0:
        utils.save_config(cfg, out)
    weights = parse_weights(cfg.reward_weights)
    charges = utils.load_charge_list(cfg.charge_list)
    reward_fn = reward_fn or (lambda text, truth: legal_reward(text, truth, weights, charges))

    torch.manual_seed(cfg.seed)
    tok = utils.load_tokenizer(cfg.model)
    budget = utils.prompt_budget(cfg.model, cfg.max_new_tokens, cfg.max_prompt_tokens)
    prompts, n_cut = load_prompts(cfg.prompts, tok, budget, cfg.response_prefix)
    if n_cut:
        utils.print0(f"rl.py: {n_cut} of {len(prompts)} prompts cut in the middle to the {budget}-token budget")
    model = build_policy(cfg.model, cfg.dtype, device, cfg.hybrid_shard, cfg.cpu_offload,
                         activation_checkpointing=cfg.activation_checkpointing in (True, "true"),
                         temperature=cfg.temperature, chunk=cfg.logprob_chunk)
    ref = build_policy(cfg.model, cfg.dtype, device, cfg.hybrid_shard, cfg.cpu_offload, trainable=False,
                       temperature=cfg.temperature, chunk=cfg.logprob_chunk) if cfg.beta > 0 else None
    optimizer = utils.build_optimizer(model, cfg.lr, cfg.weight_decay, device=device, cpu_offload=cfg.cpu_offload)
    sampler, order, start = random.Random(cfg.seed), [], 0  # the prompt order (same on every rank)
    if cfg.resume == "auto" and (extra := utils.resume_checkpoint(ckpt_root, model, optimizer)) is not None:
        sampler.setstate(extra["sampler"])
        order, start = extra["order"], extra["step"]
    if rank == 0:
        utils.truncate_logs([out / "metrics.jsonl", out / "samples.jsonl"], start)

    max_model_len = max(len(p["ids"]) for p in prompts) + cfg.max_new_tokens
    roll = VLLMRollout(cfg, rank, world, max_model_len, device) if cfg.backend == "vllm" else \
        HFRollout(model, tok, cfg)
    sync_s = roll.sync(model) if (cfg.backend == "vllm" and start > 0) else 0.0
    G, P = cfg.group_size, cfg.prompts_per_step
    no_signal_steps = 0  # steps where every group had equal rewards (warned once, counted at the end)

    def save(step: int) -> Path:
        return utils.save_checkpoint(ckpt_root, step, model, optimizer, {"step": step, "sampler": sampler.getstate(),
                                     "order": order, "config": dataclasses.asdict(cfg)}, cfg.keep_last)

    with utils.GracefulStop("rl.py") as stop:  # Ctrl-C: stop at the end of the step, save, exit 130 (main)
        for step in tqdm(range(start, cfg.max_steps), disable=rank != 0, desc="grpo", initial=start,
                         total=cfg.max_steps):
            t_step = time.time()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)  # peak_mem_gb: this step's
            # 1. rollout: this rank's slice of the step's prompts, G completions each
            mine = [prompts[i] for i in take_prompts(order, sampler, len(prompts), P * world)[rank * P:(rank + 1) * P]]
            t0 = time.time()
            comps = roll.generate([p["ids"] for p in mine], G, generator_seed=cfg.seed * 100003 + step * 1009 + rank)
            t_rollout = time.time() - t0
            sleep_freed = roll.sleep()  # GPU vLLM: weights and KV cache freed until the push
            # 2. score: each completion decoded (the forced response_prefix in front) against its prompt's truth
            texts = [cfg.response_prefix + tok.decode(c.ids, skip_special_tokens=True) for c in comps]
            scores = [reward_fn(text, mine[j // G]["truth"]) for j, text in enumerate(texts)]
            rewards = torch.tensor([s["total"] for s in scores], dtype=torch.float32)
            # 3. advantages (per group) and the training batch
            batch, adv, mask, zero_var = advantages_and_batch(mine, comps, rewards, cfg, tok.pad_token_id)
            # 4. optimise
            stats, old_logp, vllm_logp, times = optimise(model, ref, optimizer, batch, adv, mask, comps, cfg, step)
            # 5. push: the new weights into the engine (vLLM)
            sync_s = roll.sync(model)
            # 6. log: one metrics row per step (rank 0 writes it)
            row = step_metrics(step, scores, zero_var, batch, comps, old_logp, vllm_logp, stats, {
                "t_rollout": t_rollout, **times, "weight_sync_s": sync_s, "vllm_sleep_freed_gb": sleep_freed,
                "step_time": time.time() - t_step}, cfg, world, device)
            no_signal_steps += row["no_learning_signal"]
            if rank == 0:
                write_step(out, row, mine, texts, scores, cfg, first_no_signal=row["no_learning_signal"] and
                           no_signal_steps == 1)
            # 7. save: every --save_every steps; on Ctrl-C / SIGTERM save and stop (the final save is after the loop)
            stop.after_step(step + 1, cfg.max_steps, cfg.save_every, save, ckpt_root)

    if no_signal_steps:
        utils.print0(f"rl.py: {no_signal_steps} of {cfg.max_steps - start} steps had no learning signal (every group's "
                     "rewards equal): raise --group_size or the temperature, or check the reward")
    if cfg.max_steps > start:
        save(cfg.max_steps)
    utils.export_hf(model, model.hf, cfg.model, out / "final", prefix="hf.")
    roll.close()
    utils.done("rl.py", f"{out / 'final'}/ (the trained policy), {out / 'metrics.jsonl'}, {out / 'samples.jsonl'}",
               f"python evaluate.py judgment --model {out / 'final'} --data data/judgments_test.jsonl --out "
               f"runs/{utils.run_name(out / 'final')}_judgment")
    return out


def main(argv=None):
    cfg = utils.parse_config(RLConfig, argv)
    utils.run_command("rl.py", run, cfg, argv, resumable=True)


def run(cfg: RLConfig):
    """--dry_run: print the plan. Otherwise every flag and input is checked (preflight) before the process group
    starts and anything loads, then train."""
    if cfg.dry_run:
        return dry_run(cfg)
    preflight(cfg)
    train(cfg, utils.dist_init(cfg.seed, cpu_offload=cfg.cpu_offload)[3])


if __name__ == "__main__":
    sys.exit(main())
