"""
GRPO on judgment facts with legal rewards (LexPro-1.0's RL stage), in one file.

    torchrun --nproc_per_node N rl.py --model DIR --prompts RL_PROMPTS.jsonl --output_dir OUT \
        [--group_size G] [--max_steps K] [--backend vllm|hf] ...

Per step: sample `prompts_per_step` prompts (per rank), G completions each (vLLM colocated, or HF generate), score
them with utils.legal_reward, compute group-normalised advantages, recompute the old log-probs with the trainer,
take `mu` inner epochs of clipped-ratio updates, push the new weights into the vLLM engine. Writes OUT/metrics.jsonl
(a `reward` field per step), OUT/samples.jsonl, OUT/checkpoints/step_N (DCP, atomic, last K kept; `--resume auto`)
and OUT/final/ (Hugging Face folder). Plain `python rl.py ...` runs as a world of one; on CPU everything runs over gloo.

Sections:
  1. Config
  2. GRPO math            - pure functions with shapes in the docstrings (tests/test_rl.py checks them by hand)
  3. Rollouts             - vLLM colocated with per-step weight push, or HF generate
  4. Trainer              - FSDP2 via utils section 9 (as sft.py): policy and frozen reference sharded per decoder
                            block + root, loss x world_size because FSDP2 averages gradients
  5. Loop                 - metrics, samples, DCP checkpoint / resume, export
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import utils


# ----------------------------------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class RLConfig:
    """GRPO with legal rewards (charge / statute / sentence / format)."""
    model: str = field(metadata={"help": "Hugging Face model folder (policy init and reference)"})
    prompts: str = field(metadata={"help": "rl_prompts.jsonl: {prompt, truth} per line (prepare_data.py)"})
    output_dir: str = field(metadata={"help": "run folder: metrics.jsonl, samples.jsonl, ckpt/, final/"})
    group_size: int = field(default=8, metadata={"help": "G completions per prompt", "min": 2})
    prompts_per_step: int = field(default=4, metadata={"help": "prompts per rank per step", "min": 1})
    max_steps: int = field(default=100, metadata={"help": "optimizer-step groups (one rollout batch each)",
                                                  "min": 1})
    mu: int = field(default=1, metadata={"help": "inner epochs over each rollout batch", "min": 1})
    lr: float = field(default=1e-6, metadata={"help": "AdamW learning rate", "gt": 0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0})
    grad_clip: float = field(default=1.0, metadata={"help": "max grad norm (0 = off)", "min": 0})
    micro_batch: int = field(default=16, metadata={"help": "sequences per forward/backward", "min": 1})
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
    max_prompt_tokens: int = field(default=2048, metadata={"help": "longer prompts are cut from the left", "min": 1})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature", "gt": 0})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (1.0 = off)", "gt": 0, "max": 1})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)", "min": 0})
    response_prefix: str = field(default="", metadata={"help": "text forced at the start of every completion"})
    reward_weights: str = field(default="", metadata={"help": "e.g. charge=0.35,article=0.25,term=0.25,format=0.15"})
    charge_list: str | None = field(default=None,
                                    metadata={"help": "official charge list (default ../shared accu.txt)"})
    backend: str = field(default="hf", metadata={"help": "rollouts: vllm (colocated) | hf (generate)",
                                                  "choices": ("hf", "vllm")})
    vllm_kv_bytes: int = field(default=1 << 30, metadata={"help": "vLLM KV cache size in bytes", "min": 1})
    vllm_gpu_util: float = field(default=0.3, metadata={"help": "vLLM gpu_memory_utilization (GPU only)",
                                                        "gt": 0, "max": 1})
    dtype: str = field(default="float32", metadata={"help": "policy weights dtype", "choices": ("float32", "bfloat16")})
    seed: int = field(default=0, metadata={"help": "seed (prompt sampler, sampling, init)", "min": 0})
    log_every: int = field(default=1, metadata={"help": "print every N steps", "min": 0})
    sample_every: int = field(default=10, metadata={"help": "write decoded samples every N steps (0 = never)",
                                                   "min": 0})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only at the end)",
                                                 "min": 0})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept", "min": 1})
    resume: str | None = field(default=None, metadata={"help": "'auto': continue from the newest checkpoint",
                                                       "choices": ("auto",)})
    cpu_offload: bool = field(default=False, metadata={"help": "FSDP2 CPU offload of params/grads/optimizer"})
    hybrid_shard: bool = field(default=False, metadata={"help": "shard inside a node, replicate across nodes"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute each block in backward"})


def preflight(cfg: RLConfig) -> None:
    """Every flag, file and folder checked before anything is loaded or written (DataError, one line): ranges and
    choices, reward weights, the charge list, every rl_prompts.jsonl record, the model folder."""
    utils.check_fields(cfg)
    utils.check_backend(cfg.backend)
    utils.check_out_dir(cfg.output_dir, "--output_dir")
    parse_weights(cfg.reward_weights)
    if cfg.charge_list is not None:
        utils.load_charge_list(cfg.charge_list)
    load_prompts(cfg.prompts)  # every record checked, nothing tokenized
    utils.check_model_dir(cfg.model, "--model", chat_template=True)


# ----------------------------------------------------------------------------------------------------------------------
# 2. GRPO math (pure functions)
# ----------------------------------------------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-6):
    """rewards [B*G] (G consecutive completions per prompt) -> advantages [B*G].

    A = (r - mean_group) / (std_group + eps), std unbiased as in TRL/verl; scale_std=False gives Dr. GRPO's r - mean.
    """
    r = rewards.view(-1, group_size).float()
    adv = r - r.mean(dim=1, keepdim=True)
    if scale_std:
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        adv = adv / (std + eps)
    return adv.reshape(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards [B*G] -> bool [B]: True where all G rewards of a prompt are equal (no learning signal)."""
    r = rewards.view(-1, group_size)
    return (r.max(dim=1).values - r.min(dim=1).values).abs() < 1e-8


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """lengths [N] -> float mask [N, max_len] with mask[i, t] = t < lengths[i].

    Built from lengths, never from token ids: with pad == eos an id-based mask silently drops the EOS token."""
    return (torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]).float()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, T, V] (logits[:, t] predicts tokens[:, t]), tokens [N, T] -> (log-probs [N, T], entropy [N, T])."""
    logp_all = F.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per token [N, T]: exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_policy_loss(logp, old_logp, advantages, clip_low: float, clip_high: float):
    """logp, old_logp [N, T], advantages [N] -> (per-token loss [N, T], clipped [N, T] bool).

    loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)), ratio = exp(logp - old_logp)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


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
        if k not in utils.DEFAULT_REWARD_WEIGHTS:
            raise utils.DataError("--reward_weights", None, None, f"unknown component {k!r} (known: "
                                  f"{', '.join(utils.DEFAULT_REWARD_WEIGHTS)})", reason="bad_flag")
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = float("nan")
        if not 0 <= out[k] < float("inf"):
            raise utils.DataError("--reward_weights", None, None, f"{part.strip()!r}: expected {k}=WEIGHT, a number "
                                  ">= 0", reason="bad_flag")
    if sum({**utils.DEFAULT_REWARD_WEIGHTS, **out}.values()) <= 0:
        raise utils.DataError("--reward_weights", None, None, "all weights are 0", reason="bad_flag")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 3. Rollouts
# ----------------------------------------------------------------------------------------------------------------------

def load_prompts(path, tokenizer=None, max_prompt_tokens: int = 2048, response_prefix: str = "") -> list[dict]:
    """rl_prompts.jsonl -> [{'ids': prompt token ids (chat template + response_prefix), 'truth', 'prompt'}].

    Every record is checked here, so that a bad truth is a one-line DataError at load, not a crash inside the reward
    hours later: prompt a non-empty string; truth.charges a list of names (str); truth.articles a list of article
    numbers (int); truth.term_months (optional) a whole number of months >= 0; truth.life / truth.death (optional)
    true/false. tokenizer=None: check only (rl.py's preflight), nothing tokenized."""
    out, n = [], 0
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
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True) + response_prefix
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][-max_prompt_tokens:]
        out.append({"ids": ids, "truth": truth, "prompt": prompt})
    if not n:
        raise utils.DataError(path, None, None, "no prompts", reason="empty_file")
    return out


def completion_length(tokens: list[int], eos_ids: set[int]) -> tuple[int, bool]:
    """Generated ids -> (length including the first EOS, truncated?). Later ids (padding) are not part of it."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return i + 1, False
    return len(tokens), True


class HFRollout:
    """Rollouts with transformers generate on the trainer's own (FSDP2-sharded) policy: no weight sync needed.
    Generation runs inside the root module's forward (PolicyLM), so the root's own parameters are gathered for it;
    the decoder blocks stay gathered for the whole call (full weights on every rank while generating, as a colocated
    vLLM engine holds them too); with several ranks `synced_gpus` keeps every rank stepping until all finish."""

    def __init__(self, model, tokenizer, cfg: RLConfig):
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self.eos = {tokenizer.eos_token_id}

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int, generator_seed: int):
        """-> list over prompts*n of (completion ids, sampler log-probs or None, truncated)."""
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
        try:
            out = self.model(ids, attn, generate=dict(
                do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, eos_token_id=self.tok.eos_token_id,
                synced_gpus=dist_info()[1] > 1))
        finally:
            for b in blocks:
                b.set_reshard_after_forward(True)
                b.reshard()
        self.model.train(was_training)
        res = []
        for row in out[:, width:].tolist():
            n_tok, trunc = completion_length(row, self.eos)
            res.append((row[:n_tok], None, trunc))
        return res

    def sync(self, model):
        return 0.0

    def close(self):
        pass


class VLLMWeightSync:
    """vLLM worker extension (worker_extension_cls='rl.VLLMWeightSync'): load trainer weights in place."""

    def lexlab_load_weights(self, named_tensors):
        self.reload_weights(weights_iterator=iter(named_tensors))


class VLLMRollout:
    """Colocated vLLM engine; weights pushed after every optimizer step, then the prefix cache reset."""

    def __init__(self, cfg: RLConfig, seed: int):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: tensors pass directly
        from vllm import LLM
        self.cfg = cfg
        kw = dict(model=cfg.model, dtype=cfg.dtype, seed=seed, enforce_eager=True,
                  max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
                  worker_extension_cls="rl.VLLMWeightSync", enable_prefix_caching=True)
        if torch.cuda.is_available():
            kw["gpu_memory_utilization"] = cfg.vllm_gpu_util
        else:
            kw["kv_cache_memory_bytes"] = cfg.vllm_kv_bytes
        self.llm = LLM(**kw)
        self.eos = {self.llm.get_tokenizer().eos_token_id}

    def generate(self, prompt_ids, n: int, generator_seed: int):
        from vllm import SamplingParams
        cfg = self.cfg
        sp = SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k if cfg.top_k > 0 else -1,
                            max_tokens=cfg.max_new_tokens, logprobs=0, seed=generator_seed)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], sp, use_tqdm=False)
        res = []
        for o in outs:
            for c in o.outputs:
                ids = list(c.token_ids)
                lps = [d[t].logprob for d, t in zip(c.logprobs, ids)] if c.logprobs else None
                res.append((ids, lps, c.finish_reason == "length"))
        return res

    def sync(self, model) -> float:
        """Push the trainer's full (unsharded) weights into this rank's engine; returns seconds taken.

        Every rank gathers the full state dict (all-gathers of the FSDP2 shards, a collective all ranks join; no
        cpu_offload, which would leave the weights on rank 0 only) because every rank has its own engine. The
        PolicyLM prefix `hf.` is stripped; a plain HF model (tests) passes through unchanged."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        t0 = time.time()
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        named = [(k.removeprefix("hf."), v.detach()) for k, v in sd.items()]
        self.llm.collective_rpc("lexlab_load_weights", args=(named,))
        self.llm.reset_prefix_cache()
        return time.time() - t0

    def close(self):
        """Shut the engine down now, while torch.distributed is up: an in-process engine's shutdown destroys its
        process groups and the default one (vLLM's cleanup_dist_env_and_memory); left to the garbage collector it
        runs at exit, after the trainer's groups are gone, and fails."""
        self.llm.llm_engine.engine_core.shutdown()

    def greedy(self, prompt_ids, max_tokens: int):
        from vllm import SamplingParams
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids],
                                 SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]


# ----------------------------------------------------------------------------------------------------------------------
# 4. Trainer: FSDP2 with the shared pieces of utils section 9 (as sft.py)
# ----------------------------------------------------------------------------------------------------------------------
# FSDP2 AVERAGES gradients over ranks when it reduce-scatters them. The losses here are already divided by GLOBAL
# counts (tokens / sequences all-reduced), so the global loss is the SUM of the ranks' losses: each rank
# backpropagates its loss times world_size (gloo lacks PREMUL_SUM, so set_gradient_divide_factor(1.0) is no option
# on CPU; same correction as sft.train_step).

def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist_info()[1] > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class PolicyLM(nn.Module):
    """The Hugging Face causal LM under one root module, so that FSDP2's root owns the embeddings, final norm and
    lm_head (like sft.PackedCausalLM; checkpoint keys get the `hf.` prefix).

    forward(input_ids, attention_mask, start, tokens) -> (log-probs, entropy) [n, Tc] of the completion tokens
    (tokens[i, j] sits at position start[i] + j; lm_head runs on the completion positions only).
    forward(input_ids, attention_mask, generate=kwargs) -> HF generate's output ids, run inside the root's forward
    where the root's parameters are gathered (calling hf.generate directly would meet sharded embeddings and make
    a decoder block the FSDP root)."""

    def __init__(self, hf_model, device=torch.device("cpu")):
        super().__init__()
        self.hf, self.device = hf_model, device

    def forward(self, input_ids, attention_mask, start=None, tokens=None, generate: dict | None = None):
        if generate is not None:
            return self.hf.generate(input_ids=input_ids, attention_mask=attention_mask, **generate)
        hidden = self.hf.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        pos = (start[:, None] - 1 + torch.arange(tokens.shape[1], device=start.device)[None, :])
        pos = pos.clamp(max=input_ids.shape[1] - 1)  # hidden state predicting completion token j
        hidden = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))
        logp, entropy = token_logprobs(self.hf.lm_head(hidden), tokens)
        return logp.clone(), entropy  # not a view: FSDP2 hooks the root's outputs for backward


def load_model(path, dtype: str):
    """The plain Hugging Face model (what PolicyLM wraps)."""
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))


def build_policy(path, dtype: str, device, hybrid_shard: bool = False, cpu_offload: bool = False,
                 trainable: bool = True, activation_checkpointing: bool = False) -> PolicyLM:
    """PolicyLM on `device`, FSDP2-sharded by utils.shard_model (every decoder block, then the root; bf16 compute on
    GPU). trainable=False gives the frozen reference: sharded the same way (no full copy per rank), eval mode."""
    model = PolicyLM(load_model(path, dtype), device)
    if device.type == "cuda" and not cpu_offload:
        model.to(device)
    utils.shard_model(model, device, hybrid_shard, cpu_offload, activation_checkpointing and trainable)
    return model.train() if trainable else model.eval().requires_grad_(False)


def build_batch(prompt_ids: list[list[int]], completions: list[list[int]], pad_id: int):
    """Right-padded [prompt + completion] rows. -> dict(input_ids [N, L], attention [N, L], tokens [N, Tc],
    lengths [N], start [N]) where tokens[i, :lengths[i]] is completion i and `start` its position in input_ids."""
    n = len(completions)
    lengths = torch.tensor([len(c) for c in completions])
    starts = torch.tensor([len(p) for p in prompt_ids])
    total = starts + lengths
    L, Tc = int(total.max()), max(1, int(lengths.max()))
    input_ids = torch.full((n, L), pad_id, dtype=torch.long)
    tokens = torch.full((n, Tc), pad_id, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completions)):
        input_ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        tokens[i, :len(c)] = torch.tensor(c, dtype=torch.long) if c else tokens[i, :0]
    return {"input_ids": input_ids, "attention": length_mask(total, L).long(), "tokens": tokens,
            "lengths": lengths, "start": starts}


def completion_logprobs(model: PolicyLM, batch: dict, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropy [n, Tc] of the completion tokens of batch rows `rows` under `model`."""
    return model(*(batch[k][rows].to(model.device) for k in ("input_ids", "attention", "start", "tokens")))


@torch.no_grad()
def batch_logprobs(model: PolicyLM, batch: dict, micro_batch: int) -> torch.Tensor:
    """Old / reference log-probs [N, Tc]. Every rank has the same number of rows, so the FSDP2 forwards (collectives)
    line up across ranks."""
    n = batch["tokens"].shape[0]
    return torch.cat([completion_logprobs(model, batch, slice(i, i + micro_batch))[0].cpu()
                      for i in range(0, n, micro_batch)])


def train_on_batch(model: PolicyLM, optimizer, batch: dict, advantages, old_logp, ref_logp, mask,
                   cfg: RLConfig) -> dict:
    """One optimizer step on this rank's share of the rollout batch. Normalisers are global across ranks, so the
    sum over ranks of the per-rank losses is the loss of the whole global batch; each rank backpropagates its loss
    times world_size because FSDP2 averages the gradients (see the section comment)."""
    world = dist_info()[1]
    n = batch["tokens"].shape[0]
    n_tokens = all_reduce_sum(mask.sum().clone()).item()
    n_seqs = all_reduce_sum(torch.tensor(float(n))).item()
    stats = torch.zeros(5)  # loss, kl*mask, clipped*mask, entropy*mask, tokens
    optimizer.zero_grad(set_to_none=True)
    dev = model.device
    starts = range(0, n, cfg.micro_batch)
    for i in starts:
        rows = slice(i, i + cfg.micro_batch)
        model.set_requires_gradient_sync(i == starts[-1])  # reduce-scatter once, after the last micro-batch
        m = mask[rows].to(dev)
        logp, ent = completion_logprobs(model, batch, rows)
        loss_tok, clipped = clipped_policy_loss(logp, old_logp[rows].to(dev), advantages[rows].to(dev),
                                                cfg.clip_low, cfg.clip_high)
        kl = kl_k3(logp, ref_logp[rows].to(dev)) if ref_logp is not None else torch.zeros_like(logp)
        if cfg.beta > 0:
            loss_tok = loss_tok + cfg.beta * kl
        loss = aggregate_loss(loss_tok, m, cfg.loss_agg, n_tokens_global=max(n_tokens, 1.0), n_seqs_global=n_seqs,
                              constant=cfg.max_new_tokens)
        (loss * world).backward()
        stats += torch.tensor([loss.item(), (kl * m).sum().item(), (clipped.float() * m).sum().item(),
                               (ent.detach() * m).sum().item(), m.sum().item()])
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
    optimizer.step()
    stats = all_reduce_sum(stats)
    tok = max(stats[4].item(), 1.0)
    return {"loss": stats[0].item(), "kl": stats[1].item() / tok, "clip_frac": stats[2].item() / tok,
            "entropy": stats[3].item() / tok, "grad_norm": gnorm}


# ----------------------------------------------------------------------------------------------------------------------
# 5. Loop
# ----------------------------------------------------------------------------------------------------------------------

def train(cfg: RLConfig, reward_fn=None) -> Path:
    """Run GRPO; returns OUT. reward_fn(completion_text, truth) -> dict with 'total' (default utils.legal_reward).

    Under torchrun: one rank per process. Called in-process (tests, bench) without a process group: a world of one
    is set up here and torn down at the end (an existing group, e.g. an in-process vLLM engine's, is reused)."""
    preflight(cfg)
    if dist.is_initialized():
        rank, world = dist_info()
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else \
            torch.device("cpu")
        return run(cfg, reward_fn, rank, world, device)
    env = set(os.environ)
    rank, _, world, device = utils.dist_init(cfg.seed)
    try:
        return run(cfg, reward_fn, rank, world, device)
    finally:
        utils.dist_close()
        for k in set(os.environ) - env:  # dist_init's RANK / MASTER_PORT / ... must not leak into the caller
            del os.environ[k]


def run(cfg: RLConfig, reward_fn, rank: int, world: int, device) -> Path:
    from tqdm import tqdm
    from transformers import AutoTokenizer
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    if rank == 0:
        utils.save_config(cfg, out)
    weights = parse_weights(cfg.reward_weights)
    charges = utils.load_charge_list(cfg.charge_list)
    reward_fn = reward_fn or (lambda text, truth: utils.legal_reward(text, truth, weights, charges))

    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(cfg.model)
    prompts = load_prompts(cfg.prompts, tok, cfg.max_prompt_tokens, cfg.response_prefix)
    model = build_policy(cfg.model, cfg.dtype, device, cfg.hybrid_shard, cfg.cpu_offload,
                         activation_checkpointing=cfg.activation_checkpointing)
    ref = build_policy(cfg.model, cfg.dtype, device, cfg.hybrid_shard, cfg.cpu_offload, trainable=False) \
        if cfg.beta > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = random.Random(cfg.seed)  # the prompt order (same on every rank); saved with checkpoints
    order: list[int] = []
    start = 0
    if cfg.resume == "auto" and (last := utils.latest_checkpoint(ckpt_root)) is not None:
        extra = utils.load_checkpoint(last, model, optimizer)  # + this rank's RNG states
        sampler.setstate(extra["sampler"])
        order, start = extra["order"], extra["step"]
        utils.print0(f"resumed from {last} (step {start})")
    metrics_path = out / "metrics.jsonl"
    if rank == 0:  # keep the history up to the resume point only
        old = metrics_path.read_text().splitlines() if start and metrics_path.is_file() else []
        metrics_path.write_text("".join(line + "\n" for line in old if json.loads(line)["step"] <= start))

    roll = VLLMRollout(cfg, cfg.seed + rank) if cfg.backend == "vllm" else HFRollout(model, tok, cfg)
    sync_s = roll.sync(model) if (cfg.backend == "vllm" and start > 0) else 0.0
    metrics_f = open(metrics_path, "a", encoding="utf-8") if rank == 0 else None
    samples_f = open(out / "samples.jsonl", "a", encoding="utf-8") if rank == 0 else None
    n_global = cfg.prompts_per_step * world
    G = cfg.group_size

    def save(step: int):
        utils.save_checkpoint(ckpt_root, step, model, optimizer, {"step": step, "sampler": sampler.getstate(),
                              "order": order, "config": dataclasses.asdict(cfg)}, cfg.keep_last)

    for step in tqdm(range(start, cfg.max_steps), disable=rank != 0, desc="grpo", initial=start, total=cfg.max_steps):
        t_step = time.time()
        # -- pick this step's prompts (same global order on every rank; each rank takes its slice)
        while len(order) < n_global:
            perm = list(range(len(prompts)))
            sampler.shuffle(perm)
            order += perm
        picked, order = order[:n_global], order[n_global:]
        mine = [prompts[i] for i in picked[rank * cfg.prompts_per_step:(rank + 1) * cfg.prompts_per_step]]

        # -- rollouts
        t0 = time.time()
        res = roll.generate([p["ids"] for p in mine], G, generator_seed=cfg.seed * 100003 + step * 1009 + rank)
        t_rollout = time.time() - t0
        completions = [r[0] for r in res]
        truncated = torch.tensor([r[2] for r in res])
        texts = [tok.decode(c, skip_special_tokens=True) for c in completions]
        rewards_d = [reward_fn(cfg.response_prefix + t, mine[j // G]["truth"]) for j, t in enumerate(texts)]
        rewards = torch.tensor([r["total"] for r in rewards_d], dtype=torch.float32)

        # -- advantages (per group, so per rank) and dynamic sampling
        adv = group_advantages(rewards, G, cfg.scale_std)
        zero_var = zero_variance_groups(rewards, G)
        keep = torch.ones(len(completions), dtype=torch.bool)
        if cfg.dynamic_sampling:
            keep = ~zero_var.repeat_interleave(G)
        batch = build_batch([p["ids"] for p in mine for _ in range(G)], completions, tok.pad_token_id)
        mask = length_mask(batch["lengths"], batch["tokens"].shape[1]) * keep[:, None].float()
        if cfg.mask_truncated:
            mask = mask * (~truncated)[:, None].float()

        # -- old (and reference) log-probs recomputed by the trainer
        t0 = time.time()
        old_logp = batch_logprobs(model, batch, cfg.micro_batch)
        ref_logp = batch_logprobs(ref, batch, cfg.micro_batch) if ref is not None else None
        t_logp = time.time() - t0
        lp_diff = None  # only with a sampler that reports log-probs (vLLM)
        if res and res[0][1] is not None:
            vl = torch.zeros_like(old_logp)
            for i, r in enumerate(res):
                vl[i, :len(r[1])] = torch.tensor(r[1])
            lm = length_mask(batch["lengths"], vl.shape[1])
            lp_diff = ((vl - old_logp).abs() * lm).sum().item() / max(lm.sum().item(), 1)

        # -- mu inner epochs of clipped updates
        t0 = time.time()
        for _ in range(cfg.mu):
            st = train_on_batch(model, optimizer, batch, adv, old_logp, ref_logp, mask, cfg)
        t_train = time.time() - t0
        sync_s = roll.sync(model)

        # -- metrics (global over ranks)
        comp = {k: torch.tensor([r[k] for r in rewards_d]).mean() for k in rewards_d[0]}
        glob = all_reduce_sum(torch.tensor([comp[k].item() for k in comp] + [
            zero_var.float().mean().item(), batch["lengths"].float().mean().item(), truncated.float().mean().item(),
            float(zero_var.sum().item()) if cfg.dynamic_sampling else 0.0,
            sum(len(c) for c in completions) / max(t_rollout, 1e-9)])) / world
        keys = list(comp)
        rec = {"step": step + 1, "reward": glob[keys.index("total")].item()}
        rec.update({f"reward_{k}": glob[i].item() for i, k in enumerate(keys) if k != "total"})
        j = len(keys)
        rec.update({"zero_var_frac": glob[j].item(), "completion_len": glob[j + 1].item(),
                    "truncated_frac": glob[j + 2].item(), "dropped_groups": glob[j + 3].item() * world,
                    "rollout_tok_s": glob[j + 4].item() * world, "logprob_diff_vllm": lp_diff,
                    **st, "t_rollout": t_rollout, "t_logprobs": t_logp, "t_train": t_train, "weight_sync_s": sync_s,
                    "step_time": time.time() - t_step})
        if rank == 0:
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()
            if cfg.log_every and (step + 1) % cfg.log_every == 0:
                tqdm.write(f"step {step + 1} reward {rec['reward']:.3f} kl {rec['kl']:.4f} "
                           f"clip {rec['clip_frac']:.3f} len {rec['completion_len']:.1f} {rec['step_time']:.2f}s")
            if cfg.sample_every and (step + 1) % cfg.sample_every == 0:
                for j2 in range(0, len(texts), G):
                    samples_f.write(json.dumps({"step": step + 1, "prompt": mine[j2 // G]["prompt"][-200:],
                                                "completion": texts[j2], "reward": rewards_d[j2]},
                                               ensure_ascii=False) + "\n")
                samples_f.flush()
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.max_steps:
            save(step + 1)

    if cfg.max_steps > start:
        save(cfg.max_steps)
    utils.export_hf(model, model.hf, cfg.model, out / "final", prefix="hf.")
    if rank == 0:
        metrics_f.close()
        samples_f.close()
    roll.close()
    return out


def main(argv=None):
    cfg = utils.parse_config(RLConfig, argv)
    try:
        train(cfg)
    except utils.DataError as e:
        utils.fail("rl.py", e)


if __name__ == "__main__":
    main()
