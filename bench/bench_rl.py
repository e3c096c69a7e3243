"""Step time of rl.py's GRPO loop vs TRL's GRPOTrainer on the same tiny config, in one run.

    python bench/bench_rl.py [--steps 5] [--group_size 8] [--prompts_per_step 4] [--max_new_tokens 32]

Both use transformers generate for rollouts (rl.py --backend hf by default; TRL without vLLM;
--backend vllm times rl.py with colocated vllm rollouts and weight push), the same tiny model, prompts,
G, prompts per step, completion length, temperature 1, lr, and rl.legal_reward. Prints rl.py's breakdown
(rollout / log-probs / train / sync) and the ratio of mean step times (first step excluded as warm-up).
rl.py's trainer is FSDP2 (a world of one: gloo on CPU, nccl on a GPU). Same device both sides: on a GPU TRL runs there
too (use_cpu=False, bf16 autocast; rl.py: fp32 master weights, bf16 compute), on CPU both run on CPU in fp32.
Prints the peak GPU memory of each side on a GPU. The tiny model's tokenizer is trained on REPO/data/sample, so numbers
only compare within one checkout (pass --model for a real one).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import rl  # noqa: E402
import utils  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--group_size", type=int, default=8)
    ap.add_argument("--prompts_per_step", type=int, default=4)
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--model", default=None, help="Hugging Face model folder (default: build the tiny model)")
    ap.add_argument("--backend", default="hf", help="rl.py rollouts: hf (same as TRL here) | vllm (colocated)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    mdir = a.model or utils.build_tiny_model(work / "model")
    truth = {"charges": ["盗窃"], "articles": [264], "term_months": 12, "life": False, "death": False}
    facts = [f"被告人{n}于2016年窃取他人财物价值{v}元。" for n in "甲乙丙丁戊己庚辛" for v in (800, 3000)]
    utils.write_jsonl(work / "p.jsonl", [{"prompt": utils.judgment_prompt(f), "truth": truth} for f in facts])

    # ---- rl.py
    argv = ["--model", str(mdir), "--prompts", str(work / "p.jsonl"), "--out", str(work / "ours"), "--group_size",
            a.group_size, "--prompts_per_step", a.prompts_per_step, "--max_steps", a.steps + 1, "--max_new_tokens",
            a.max_new_tokens, "--lr", 1e-5, "--micro_batch_size", a.group_size * a.prompts_per_step, "--log_every", 0,
            "--sample_every", 0, "--backend", a.backend, "--vllm_kv_bytes", 1 << 27]
    cuda = torch.cuda.is_available()
    subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "rl.py"), *map(str, argv)], check=True)  # as users run it
    m = [json.loads(x) for x in open(work / "ours" / "metrics.jsonl")]
    peak_ours = max(x["peak_mem_gb"] for x in m) if cuda else None
    m = m[1:]
    ours = {k: sum(x[k] for x in m) / len(m) for k in ("step_time", "t_rollout", "t_logprobs", "t_train",
                                                       "weight_sync_s", "completion_len")}

    # ---- TRL GRPOTrainer
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.t, self.times = None, []

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.time()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.time() - self.t)

    def reward(completions, truth, **kw):
        return [rl.legal_reward(c[0]["content"] if isinstance(c, list) else c, t)["total"]
                for c, t in zip(completions, truth)]

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": utils.judgment_prompt(f)}], "truth": truth}
                            for f in facts])
    n = a.group_size * a.prompts_per_step
    targs = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=n, num_generations=a.group_size,
                       max_completion_length=a.max_new_tokens, learning_rate=1e-5, max_steps=a.steps + 1,
                       temperature=1.0, top_p=1.0, beta=0.0, report_to="none", logging_steps=1, save_strategy="no",
                       use_cpu=not cuda, bf16=cuda, gradient_accumulation_steps=1)
    timer = Timer()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(mdir), reward_funcs=reward, args=targs,
                          train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(mdir), callbacks=[timer])
    trainer.train()
    trl_step = sum(timer.times[1:]) / max(len(timer.times) - 1, 1)

    print(f"\nrl.py backend={a.backend}; same tiny config: G={a.group_size} prompts/step={a.prompts_per_step} "
          f"max_new_tokens={a.max_new_tokens} steps={a.steps} (+1 warm-up)")
    print(f"rl.py   step {ours['step_time']:.3f}s = rollout {ours['t_rollout']:.3f} "
          f"+ logprobs {ours['t_logprobs']:.3f} + train {ours['t_train']:.3f} + sync {ours['weight_sync_s']:.3f} "
          f"(mean completion {ours['completion_len']:.1f})")
    print(f"TRL     step {trl_step:.3f}s  (device: {'cuda' if cuda else 'cpu'} both sides)")
    if cuda:
        print(f"peak GPU memory: rl.py {peak_ours:.2f} GiB, TRL {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB")
    print(f"ratio rl.py / TRL = {ours['step_time'] / trl_step:.2f}")


if __name__ == "__main__":
    main()
