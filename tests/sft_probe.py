"""Run under torchrun by tests/test_sft.py (not a test itself): what one rank holds. Prints one JSON line per rank.

    probe.py load MODEL_DIR                 this rank's RSS growth while sft.load_model builds the sharded model
    probe.py grads MODEL_DIR STAGE_DIR true|false
                                            bytes of gradients this rank holds between the micro-batches of one
                                            sft.train_step (grad_accum 3), with --reduce_every_micro_batch true|false
    probe.py kill_in_save STEP SFT_ARGS...  sft.main(SFT_ARGS), SIGKILLed right after the sharded write of the
                                            step-STEP checkpoint (the save half done: not yet marked complete)
"""
import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sft  # noqa: E402
import utils  # noqa: E402


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def held_grad_bytes(model) -> int:
    """Gradient bytes held by FSDP2 on this rank: the sharded .grad plus the unsharded gradients it keeps between
    micro-batches when gradient sync is off (FSDP2 internals: FSDPParam)."""
    from torch.distributed.fsdp import FSDPModule

    def nbytes(t):
        if t is None:
            return 0
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()
    total = 0
    for m in model.modules():
        group = m._get_fsdp_state()._fsdp_param_group if isinstance(m, FSDPModule) else None
        for fp in (group.fsdp_params if group else []):
            total += nbytes(fp.sharded_param.grad) + nbytes(getattr(fp, "unsharded_accumulated_grad", None))
            unsharded = getattr(fp, "_unsharded_param", None)
            total += nbytes(unsharded.grad if unsharded is not None else None)
    return total


def kill_in_save(step: int, argv: list):
    import os
    import signal

    import torch.distributed.checkpoint as dcp
    save = dcp.save

    def save_then_die(state, checkpoint_id):
        save(state, checkpoint_id=checkpoint_id)
        if checkpoint_id.endswith(f"step_{step:08d}"):
            os.kill(os.getpid(), signal.SIGKILL)
    dcp.save = save_then_die  # utils.save_checkpoint calls dcp.save(..., checkpoint_id=the .tmp_ folder)
    sft.main(argv)


def report(row: dict) -> None:
    """One JSON line on stdout in a single write() (atomic below PIPE_BUF): the ranks share the pipe, and print() under
    PYTHONUNBUFFERED (as CI runs) writes the text and its newline separately, so two ranks' lines could run together."""
    line = (json.dumps(row) + "\n").encode()
    assert len(line) < 4096, len(line)
    os.write(1, line)


def main():
    if sys.argv[1] == "kill_in_save":
        return kill_in_save(int(sys.argv[2]), sys.argv[3:])
    mode, model_dir = sys.argv[1], sys.argv[2]
    rank, _, world, device = utils.dist_init(0)
    if mode == "load":
        cfg = sft.SFTConfig(model=model_dir)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        with torch.device("meta"):  # import the modeling code first: its import alone is ~200 MB of RSS
            AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
        before = rss_bytes()
        model, hf, _ = sft.load_model(cfg, device)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        n = sum(p.numel() for p in hf.parameters())
        report({"rank": rank, "rss_growth": peak - before, "fp32_bytes": 4 * n})
    else:
        cfg = sft.SFTConfig(model=model_dir, grad_accum=3, reduce_every_micro_batch=sys.argv[4] == "true")
        model, hf, _ = sft.load_model(cfg, device)
        optimizer = utils.build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device)
        data = sft.PackedStage(sys.argv[3])
        held = []
        model.register_forward_pre_hook(lambda *a: held.append(held_grad_bytes(model)))
        r = sft.train_step(model, optimizer, data, list(range(world * 3)), cfg, rank, world, device, 0)
        n = sum(p.numel() for p in hf.parameters())
        report({"rank": rank, "held": held, "fp32_bytes": 4 * n, "loss": r["loss"]})
    utils.dist_close()


if __name__ == "__main__":
    main()
