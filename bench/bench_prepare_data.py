"""Benchmark prepare_data.py against a naive per-record baseline on a synthetic legal+general mix, side by side.

    python bench/bench_prepare_data.py --n 20000            # both, each in its own process; prints the ratio
    python bench/bench_prepare_data.py --n 1000000 --only fast

The synthetic mix is built from the built-in sample (judgments, consultations, statutes, LawBench-style tasks,
general instructions), each record made unique by a serial number so dedup keeps it. Both sides read the same files
and do the same work: convert, dedup, decontaminate against LawBench (../shared/lawbench when present, else the
sample one), tokenize with the chat template (labels on assistant tokens), pack to --seq_len.

  fast  = prepare_data.run (streaming to disk, rolling-hash windows, batched tokenizer in --workers processes,
          best-fit packing, memory-mapped outputs)
  naive = everything in Python lists in memory: windows as a set of strings, encode_chat one record at a time,
          first-fit packing by scanning every open pack.

Reported: records/s, wall seconds, peak RSS (max over the process and its workers), and extrapolation to 1M records.
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import utils  # noqa: E402

KINDS = [("judgments", "judgments.jsonl", 0.35), ("consultation", "consult_qa.jsonl", 0.25),
         ("statutes", "statutes.jsonl", 0.1), ("lawbench_task", "lawbench_style_tasks.jsonl", 0.2),
         ("general", "general_alpaca.json", 0.1)]


def make_mix(n: int, out: Path) -> Path:
    """Write ~n synthetic records (unique by a serial number) and a manifest; returns the manifest path."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    manifest = []
    for kind, fname, share in KINDS:
        base = [r for _, r in utils.iter_records(REPO / "data" / "sample" / fname)]
        if kind == "consultation":
            base = [r for r in base if len(r["answer"]) >= 20 and "《" in r["answer"]]
        path = out / f"{kind}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i in range(int(n * share)):
                r = json.loads(json.dumps(rng.choice(base), ensure_ascii=False))
                tag = f"（编号{i}）"
                if kind == "judgments":
                    r["fact"] = tag + r["fact"]
                elif kind == "consultation":
                    r["question"] = tag + r["question"]
                elif kind == "statutes":
                    r["text"] = r["text"] + tag
                elif kind == "lawbench_task":
                    r["question"] = tag + r["question"]
                else:
                    r["instruction"] = tag + r["instruction"]
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        manifest.append({"name": kind, "kind": kind, "path": str(path)})
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    return out / "manifest.json"


def lawbench_dir() -> Path:
    shared = utils.SHARED / "lawbench"
    return shared if (shared / "data").is_dir() else REPO / "data" / "sample" / "lawbench"


# ---- fast: prepare_data.run -------------------------------------------------------------------------------------------

def run_fast(manifest: Path, model: str, out: Path, seq_len: int, workers: int) -> dict:
    import prepare_data as P
    cfg = P.Config(manifest=str(manifest), model=model, out=str(out), overwrite=True, lawbench_dir=str(lawbench_dir()),
                   seq_len=seq_len, workers=workers, general_ratio=0.1)
    rep = P.run(cfg)
    return {"records": sum(s["read"] for s in rep["sources"].values()),
            "tokens": rep["stages"]["stage1"]["tokens"],
            "efficiency": rep["stages"]["stage1"]["packing_efficiency"]}


# ---- naive: one record at a time, Python lists ------------------------------------------------------------------------

def run_naive(manifest: Path, model: str, seq_len: int) -> dict:
    import prepare_data as P
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    cfg = P.Config(out="unused")
    windows = set()  # every 24-char (12 for short items) window string of every LawBench question
    for f in sorted((lawbench_dir() / "data" / "zero_shot").glob("*.json")):
        for _, rec in utils.iter_records(f):
            q = P.normalize(rec["question"])
            w = 24 if len(q) >= 48 else 12
            windows.update(q[i:i + w] for i in range(len(q) - w + 1))
    samples, seen, n = [], set(), 0
    for src in P.load_manifest(manifest):
        rng = random.Random(src["name"])
        for path, line, rec in P.read_source(src, "raise", {}):
            n += 1
            try:
                conv = P.CONVERTERS[src["kind"]](rec, path, line, rng, src["options"], cfg, None)
            except P.Drop:
                continue
            if src["kind"] in P.LEGAL_TASK_KINDS:
                rng.random()  # collect's stage-2 draw: the same templates as the fast side
            s = conv.samples[0]
            text = P.normalize(P.sample_text(s))
            if text in seen:
                continue
            seen.add(text)
            if sum(text[i:i + 24] in windows for i in range(len(text) - 23)) >= 24:
                continue
            samples.append(s.messages)
    packs, used = [], []  # first fit: scan every pack
    tokens = 0
    for m in samples:
        ids, labels = P.encode_chat(tok, m)
        ids, labels = ids[:seq_len], labels[:seq_len]
        tokens += len(ids)
        for p, u in enumerate(used):
            if u + len(ids) <= seq_len:
                packs[p][0].extend(ids)
                packs[p][1].extend(labels)
                used[p] += len(ids)
                break
        else:
            packs.append([list(ids), list(labels)])
            used.append(len(ids))
    return {"records": n, "tokens": tokens, "efficiency": tokens / (len(packs) * seq_len)}


# ---- driver -------------------------------------------------------------------------------------------------------

def child(args):
    t = time.time()
    if args.child == "fast":
        res = run_fast(Path(args.manifest), args.model, Path(args.work) / "fast_out", args.seq_len, args.workers)
    else:
        res = run_naive(Path(args.manifest), args.model, args.seq_len)
    res["seconds"] = time.time() - t
    ru_s, ru_c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    res["cpu_s"] = ru_s.ru_utime + ru_s.ru_stime + ru_c.ru_utime + ru_c.ru_stime  # comparable on a busy machine
    res["peak_rss_mb"] = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # this process and its (joined)
                             resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024  # tokenizer workers
    print("RESULT " + json.dumps(res))


def measure(mode, args, manifest):
    cmd = [sys.executable, __file__, "--child", mode, "--manifest", str(manifest), "--model", args.model,
           "--work", args.work, "--seq_len", str(args.seq_len), "--workers", str(args.workers)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        sys.exit(f"{mode} failed:\n{r.stderr[-3000:]}")
    res = json.loads([x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="synthetic records")
    ap.add_argument("--model", default=None, help="tokenizer folder (default: build the tiny model)")
    ap.add_argument("--work", default="runs/bench_prepare_data")
    ap.add_argument("--seq_len", type=int, default=32768)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=["fast", "naive"], default=None)
    ap.add_argument("--child", default=None)
    ap.add_argument("--manifest", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args)
    work = Path(args.work).resolve()
    args.work = str(work)
    if args.model is None:
        args.model = str(utils.build_tiny_model(work / "model", overwrite=True))
    manifest = make_mix(args.n, work / "mix")
    results = {}
    for mode in (["fast", "naive"] if args.only is None else [args.only]):
        results[mode] = measure(mode, args, manifest)
        r = results[mode]
        r["records_per_s"] = r["records"] / r["seconds"]
        r["extrapolated_1M_min"] = 1e6 / r["records_per_s"] / 60
        r["records_per_cpu_s"] = r["records"] / r["cpu_s"]
    print(f"\nprepare_data benchmark: {args.n} synthetic records, seq_len {args.seq_len}, workers {args.workers}, "
          f"{os.cpu_count()} CPUs, LawBench index from {lawbench_dir()}")
    print(f"{'':<8}{'records':>9}{'wall s':>9}{'CPU s':>9}{'rec/s':>9}{'rec/CPU-s':>11}{'1M (min)':>10}"
          f"{'peak RSS MB':>13}{'tokens':>12}{'eff.':>8}")
    for mode, r in results.items():
        print(f"{mode:<8}{r['records']:>9}{r['seconds']:>9.1f}{r['cpu_s']:>9.1f}{r['records_per_s']:>9.0f}"
              f"{r['records_per_cpu_s']:>11.0f}{r['extrapolated_1M_min']:>10.1f}{r['peak_rss_mb']:>13.0f}{r['tokens']:>12}"
              f"{r['efficiency']:>8.2%}")
    if len(results) == 2:
        f, n = results["fast"], results["naive"]
        print(f"fast / naive: wall speed {f['records_per_s'] / n['records_per_s']:.2f}x, "
              f"CPU efficiency {f['records_per_cpu_s'] / n['records_per_cpu_s']:.2f}x, "
              f"peak RSS {f['peak_rss_mb'] / n['peak_rss_mb']:.2f}x")
    print(f"machine load average now: {os.getloadavg()}")
    (work / "bench_result.json").write_text(json.dumps({"n": args.n, **results}, indent=2))


if __name__ == "__main__":
    main()
