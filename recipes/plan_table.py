"""The README's table "what fits on one node of 8 GPUs": model x GPU memory x seq_len -> GiB per GPU, host RAM per
node and the sft.py flags needed, read off sft.py's memory plan (utils.memory_plan) with its defaults
(activation checkpointing auto). Needs only config.json files (../shared/model_shapes); seconds on a laptop.

    python recipes/plan_table.py [--shapes ../shared/model_shapes] [--gpus 8]
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sft  # noqa: E402
import utils  # noqa: E402

MODELS = ("qwen2.5-7b", "internlm2-7b-llama-layout", "r1-distill-qwen-14b", "r1-distill-qwen-32b",
          "r1-distill-llama-70b")
GPUS_GB = (80, 141)
SEQ_LENS = (8192, 32768)
# the flags tried, in order, on top of the defaults: the first whose plan is within utils.AUTO_TARGET (90 %) of the
# GPU is the row's answer
TRIES = ({}, {"cpu_offload": True}, {"cpu_offload": True, "loss_chunk": 1024})


def rows(shapes: Path, gpus: int) -> list[str]:
    from transformers import AutoConfig
    out = ["| model | GPU | seq_len | GiB per GPU | host RAM per node | flags needed |", "|---|---|---|---|---|---|"]
    for name in MODELS:
        hc = AutoConfig.from_pretrained(shapes / name)
        for gb in GPUS_GB:
            for seq in SEQ_LENS:
                for tri in TRIES:
                    cfg = sft.SFTConfig(model=name, **tri)
                    cfg, plan, _, _ = sft.plan_run(cfg, hc, gpus, seq, gb)
                    if utils.fits(plan["total"], gb, utils.AUTO_TARGET):  # headroom for fragmentation
                        break
                flags = (["--activation_checkpointing true (auto)"] if cfg.activation_checkpointing == "true" else [])
                flags += [f"--{k} {str(v).lower()}" for k, v in tri.items()]
                fit = "" if utils.fits(plan["total"], gb) else " (does not fit)"
                out.append(f"| {name} | {gb} GB | {seq // 1024}k | {plan['total'] / utils.GIB:.1f}{fit} | "
                           f"{plan['host_per_node'] / utils.GIB:.0f} GiB | {' '.join(flags) or 'none'} |")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--shapes", default=str(utils.SHARED / "model_shapes"))
    ap.add_argument("--gpus", type=int, default=8)
    a = ap.parse_args(argv)
    print("\n".join(rows(Path(a.shapes), a.gpus)))


if __name__ == "__main__":
    main()
