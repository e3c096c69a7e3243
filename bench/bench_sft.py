"""
bench_sft.py - SFT throughput of sft.py vs TRL's SFTTrainer (packing, padding-free), same model / data / hardware,
one run, side by side: tokens/s (real tokens), MFU (same FLOP formula for both, sft.train_flops: 6 * decoder
params (no embeddings) * tokens + 6 * lm_head params * the tokens it is computed on (sft.py: supervised ones; TRL:
all) + per-sample causal attention) against BOTH the datasheet dense bf16 peak (GPU) and the measured matmul rate,
labelled; peak memory (GPU: max allocated; CPU: peak RSS of the training process).

    python bench/bench_sft.py                       # CPU: tiny model, seq_len 512
    python bench/bench_sft.py --shape qwen2.5-1.5b --seq_len 32768 --n_samples 4000 --steps 12   # one GPU

The model is random-init (shape only); data are synthetic chats tokenized with prepare_data.encode_chat, so nothing
is downloaded. Each trainer runs in its own subprocess (clean peak memory). Results: OUT/bench_sft.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import prepare_data  # noqa: E402
import sft  # noqa: E402
import utils  # noqa: E402

SHAPES = {  # config overrides on top of utils.TINY_CONFIG
    "tiny": {},
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, rope_theta=1e6),
}
WORDS = ["盗窃", "诈骗", "被告人", "张某", "刑法", "第二百六十四条", "判处", "有期徒刑", "一年", "罚金", "法院", "认为",
         "事实", "清楚", "证据", "确实", "充分", "本院", "依照", "规定", "数额", "较大", "公诉机关", "指控"]


def synthetic_samples(tok, n: int, max_len: int, seed: int = 0) -> list:
    """n chat samples with lengths spread from short to ~max_len/2 tokens (like real SFT mixes)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        k = rng.randint(2, max(3, max_len // 12))
        msgs = [{"role": "user", "content": "".join(rng.choices(WORDS, k=k))},
                {"role": "assistant", "content": "".join(rng.choices(WORDS, k=max(1, k // 2)))}]
        ids, labels = prepare_data.encode_chat(tok, msgs)
        if len(ids) <= max_len:
            out.append((ids, labels))
    return out


def matmul_tflops(device, n: int | None = None, reps: int | None = None) -> float:
    """Measured dense matmul rate of this device, TFLOP/s (bf16 on GPU, fp32 on CPU): MFU's second denominator
    (here and in bench/gpu_check.py)."""
    gpu = device.type == "cuda"
    n, reps = n or (8192 if gpu else 1024), reps or (30 if gpu else 5)
    dtype = torch.bfloat16 if gpu else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if gpu:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if gpu:
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


# ---- TRL side (runs in a subprocess: `bench_sft.py --_trl ARGS.json`) ----

def run_trl(spec: dict):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    samples = json.loads(Path(spec["samples"]).read_text())
    tok = AutoTokenizer.from_pretrained(spec["model"])
    gpu = torch.cuda.is_available()
    attn = "sdpa"
    if gpu:
        try:
            import flash_attn  # noqa: F401
            attn = "flash_attention_2"
        except ImportError:
            pass
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, attn_implementation=attn)
    ds = Dataset.from_list([{"input_ids": i, "labels": l} for i, l in samples])
    args = SFTConfig(output_dir=spec["out"], packing=True, packing_strategy="bfd", padding_free=True,
                     max_length=spec["seq_len"], per_device_train_batch_size=1,
                     gradient_accumulation_steps=spec["grad_accum"], max_steps=spec["steps"],
                     learning_rate=1e-5, lr_scheduler_type="cosine", warmup_steps=1, max_grad_norm=1.0,
                     logging_steps=1, report_to=[], save_strategy="no", bf16=gpu, use_cpu=not gpu,
                     dataloader_num_workers=0, seed=0, gradient_checkpointing=spec["activation_checkpointing"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    batches = []  # per micro-batch: (real tokens, sum of squared sample lengths)
    collate = trainer.data_collator

    def counting_collator(features):
        out = collate(features)
        pos = out["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        batches.append((len(pos), sum((b - a) ** 2 for a, b in zip(starts[:-1], starts[1:]))))
        return out

    trainer.data_collator = counting_collator
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if gpu:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    trainer.add_callback(Timer())
    trainer.train()
    g = spec["grad_accum"]
    steps = [{"n_tokens": sum(b[0] for b in batches[i * g:(i + 1) * g]),
              "n_lm_head": sum(b[0] for b in batches[i * g:(i + 1) * g]),  # TRL projects every position
              "sum_len_sq": sum(b[1] for b in batches[i * g:(i + 1) * g]), "time_s": t} for i, t in enumerate(times)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    Path(spec["result"]).write_text(json.dumps({"steps": steps, "losses": losses, "peak_mem_gb": utils.peak_memory_gb(
        torch.device("cuda" if torch.cuda.is_available() else "cpu"))}))


# ---- driver ----

def summarise(name, steps, n_params, n_head, n_layers, attn_dim, peak_tflops, datasheet, peak_mem) -> dict:
    """Steady state: drop the first step (warm-up, allocator, lazy init). tokens_per_s / mfu: the MEDIAN over steps
    (robust to other jobs on a shared machine); *_mean: total tokens (FLOPs) over total time. mfu: vs the measured
    matmul rate; mfu_datasheet: vs the GPU's datasheet dense bf16 peak (None on CPU)."""
    import statistics
    s = steps[1:] or steps
    flops = [sft.train_flops(n_params, x["n_tokens"], x["sum_len_sq"], n_layers, attn_dim, n_head, x["n_lm_head"])
             for x in s]
    secs = sum(x["time_s"] for x in s)
    rate = statistics.median(f / x["time_s"] for f, x in zip(flops, s))
    return {"trainer": name, "tokens_per_s": statistics.median(x["n_tokens"] / x["time_s"] for x in s),
            "mfu": rate / (peak_tflops * 1e12), "mfu_datasheet": rate / (datasheet * 1e12) if datasheet else None,
            "tokens_per_s_mean": sum(x["n_tokens"] for x in s) / secs,
            "mfu_mean": sum(flops) / secs / (peak_tflops * 1e12), "peak_mem_gb": peak_mem, "steps_timed": len(s)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--n_samples", type=int, default=400)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--grad_accum", type=int, default=2)
    ap.add_argument("--activation_checkpointing", action="store_true")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_sft"))
    ap.add_argument("--_trl", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._trl:
        return run_trl(json.loads(Path(a._trl).read_text()))

    from transformers import AutoConfig, AutoTokenizer
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_dir = utils.build_tiny_model(out / f"model_{a.shape}", overwrite=True, **SHAPES[a.shape])
    tok = AutoTokenizer.from_pretrained(model_dir)
    samples = synthetic_samples(tok, a.n_samples, a.seq_len)
    stage = prepare_data.write_packed_stage(out / "stage", samples, a.seq_len, tok.pad_token_id, stage="bench",
                                            best_fit=True)  # best fit, as prepare_data.py packs (and TRL's BFD)
    (out / "samples.json").write_text(json.dumps(samples))
    cfg = AutoConfig.from_pretrained(model_dir)
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        n_params, n_head = sft.flop_params(AutoModelForCausalLM.from_config(cfg))  # decoder only, lm_head
    attn_dim = sft.attention_dim(cfg)
    peak, datasheet = matmul_tflops(device), sft.datasheet_tflops(device)
    meta = json.loads((stage / "meta.json").read_text())
    print(f"device {device}, torch threads {torch.get_num_threads()}, decoder params {n_params / 1e6:.1f}M, "
          f"{len(samples)} samples -> {meta['n_packs']} packs of {a.seq_len} (efficiency "
          f"{meta['packing_efficiency']:.3f}), measured matmul peak {peak:.3f} TFLOP/s", flush=True)

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    ours_dir = out / "sft_run"
    subprocess.run([sys.executable, str(REPO / "sft.py"), "--model", str(model_dir), "--data", str(stage),
                    "--out", str(ours_dir), "--max_steps", str(a.steps), "--grad_accum", str(a.grad_accum),
                    "--activation_checkpointing", str(a.activation_checkpointing).lower(),
                    "--peak_tflops", str(peak)], check=True, env=env)
    rows = [json.loads(l) for l in (ours_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [{**r, "n_lm_head": r["n_supervised"]} for r in rows]  # sft.py projects supervised rows only
    ours = summarise("sft.py (FSDP2, packed)", rows, n_params, n_head, cfg.num_hidden_layers, attn_dim, peak,
                     datasheet, max(r["peak_mem_gb"] for r in rows))

    spec = {"model": str(model_dir), "samples": str(out / "samples.json"), "seq_len": a.seq_len, "steps": a.steps,
            "grad_accum": a.grad_accum, "out": str(out / "trl_run"), "result": str(out / "trl_result.json"),
            "activation_checkpointing": a.activation_checkpointing}
    (out / "trl_spec.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, __file__, "--_trl", str(out / "trl_spec.json")], check=True, env=env)
    trl_res = json.loads((out / "trl_result.json").read_text())
    theirs = summarise("TRL SFTTrainer (packing bfd, padding-free)", trl_res["steps"], n_params, n_head,
                       cfg.num_hidden_layers, attn_dim, peak, datasheet, trl_res["peak_mem_gb"])

    import transformers
    import trl
    result = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
              "torch": torch.__version__, "transformers": transformers.__version__, "trl_version": trl.__version__,
              "shape": a.shape, "n_params": n_params, "seq_len": a.seq_len, "steps": a.steps,
              "grad_accum": a.grad_accum, "matmul_peak_tflops": peak, "datasheet_tflops": datasheet,
              "ours": ours, "trl": theirs,
              "ratio_tokens_per_s": ours["tokens_per_s"] / theirs["tokens_per_s"],
              "ratio_peak_mem": ours["peak_mem_gb"] / theirs["peak_mem_gb"],
              "ours_losses": [r["loss"] for r in rows], "trl_losses": trl_res["losses"]}
    (out / "bench_sft.json").write_text(json.dumps(result, indent=2))
    print(f"\n{'trainer':45s} {'tokens/s (median)':>18s} {'(mean)':>8s} {'MFU vs matmul':>14s} "
          f"{'MFU vs datasheet':>17s} {'peak mem GB':>12s}")
    for r in (ours, theirs):
        ds = f"{r['mfu_datasheet']:.2%}" if r["mfu_datasheet"] is not None else "n/a (no GPU)"
        print(f"{r['trainer']:45s} {r['tokens_per_s']:18.1f} {r['tokens_per_s_mean']:8.1f} {r['mfu']:14.2%} "
              f"{ds:>17s} {r['peak_mem_gb']:12.2f}")
    print(f"MFU vs matmul: against this device's measured dense matmul rate ({peak:.3f} TFLOP/s); MFU vs datasheet: "
          f"against {datasheet or 'n/a'} TFLOP/s dense bf16 (sft.PEAK_TFLOPS)")
    print(f"ratio sft.py / TRL: tokens/s x{result['ratio_tokens_per_s']:.2f}, peak memory "
          f"x{result['ratio_peak_mem']:.2f}   ({result['device']}, torch {torch.__version__}, trl {trl.__version__})")


if __name__ == "__main__":
    main()
