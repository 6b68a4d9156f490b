"""GPU check: train HLLM stage-1 steps and embed a batch on a CUDA device; report tokens/s and MFU.

    .venv/bin/python -m benchmarks.gpu_check                       # on a machine with CUDA
    .venv/bin/python -m benchmarks.gpu_check --device cpu --shape tiny --steps 2   # a smoke run anywhere

Without CUDA (and no --device cpu) it prints why and exits 0 having measured nothing: a CPU cannot stand
in for these figures. The model is random (no download): both LLMs Llama-shaped, `--shape tinyllama`
(TinyLlama-1.1B's shape: hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632) or `tiny`.

A training step is HLLM stage 1 end to end: the Item LLM embeds every item of a batch of user
sequences from token ids, the User LLM predicts the next item embedding at each position, and the
model's own generative loss (HLLM.losses: InfoNCE with in-catalogue negatives) is backpropagated into
both LLMs, AdamW, bf16 autocast where the device supports it. Every input is created on the model's
device: the placement the trainer must do. Embedding is feature_gen.inference.encoders.embed_token_ids
(the path the Spark jobs and consumers use) on the same device.

Then the trainer itself on the device (`trainer_check`, issue 21 item 4): `python -m trainer.train
--config X --deepspeed --deepspeed_config ds.json` (DeepSpeed's own arguments; the JSON asks for ZeRO-2
and 2 micro-batches per optimizer step), `train.precision: auto` (bf16 on a bf16 GPU), HLLM stage 1
(catalogue cache, checkpoints) and stage 2 from its bundle (cached catalogue as a float32 buffer read
through a bf16 adapter and beside bf16 ID rows, full softmax in float32, evaluation of a bf16 User LLM
ranked in float32). A batch, a negative or a cache left on the
CPU stops these runs at their first step with a device-mismatch error; the check reports each run's
device, precision, accumulation, steps, losses and validation NDCG@10. `--no-trainer` skips it.

MFU (nanoGPT's): achieved FLOP/s over the device's peak. Achieved = 6 x non-embedding parameters x
tokens (forward + backward) + attention, per second; the peak is measured in the same run (a bf16,
else fp32, 8192^3 matmul), or `--peak-tflops` (H100 SXM bf16 dense: 989). Writes
benchmarks/results/gpu_check.json; the figures belong in BENCHMARKS.md ("GPU check").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
SHAPES = {
    "tinyllama": {"hidden_size": 2048, "num_layers": 22, "num_heads": 32, "num_kv_heads": 4, "intermediate_size": 5632,
                  "max_position_embeddings": 2048},
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def non_embedding_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if "embed_tokens" not in name)


def train_flops(model, tokens_item: int, item_len: int, seq_len: int, n_seqs: int) -> float:
    """6 x params x tokens for both LLMs, plus attention scores (12 x layers x hidden x L^2 per sequence)."""
    item_cfg = model.item_llm.backbone.config
    user_cfg = model.user_llm.backbone.config
    dense = 6 * non_embedding_params(model.item_llm) * tokens_item + 6 * non_embedding_params(model.user_llm) * n_seqs * seq_len
    attn = 12 * item_cfg.num_hidden_layers * item_cfg.hidden_size * item_len**2 * (tokens_item // item_len)
    attn += 12 * user_cfg.num_hidden_layers * user_cfg.hidden_size * seq_len**2 * n_seqs
    return float(dense + attn)


def run(device_name: str, shape: str, steps: int, batch_users: int, seq_len: int, item_len: int, embed_items: int,
        peak_tflops: float | None) -> dict:
    from feature_gen.config import HLLMConfig
    from feature_gen.inference.encoders import embed_token_ids, torch_device
    from feature_gen.model.hllm import build_hllm
    from feature_gen.model.losses import Candidates

    device = torch_device(device_name)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    amp_dtype = torch.bfloat16 if bf16 else torch.float32
    cfg = HLLMConfig.model_validate({
        "item_text": {"max_item_tokens": item_len},
        "item_llm": {"source": "tiny_random", "tiny": SHAPES[shape]},
        "user_llm": {"source": "tiny_random", "tiny": {**SHAPES[shape], "seed": 1}},
        "loss": {"num_negatives": 512},
        "data": {"max_seq_len": seq_len},
    })
    model, tokenizer = build_hllm(cfg)
    model.to(device).train()
    vocab = model.item_llm.backbone.config.vocab_size
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator(device="cpu").manual_seed(0)
    n_items = batch_users * (seq_len + 1)  # each sequence's items and its final target
    step_times = []
    for step in range(steps):
        # Inputs are made on the CPU (as a loader would) and moved to the model's device.
        input_ids = torch.randint(1, vocab, (n_items, item_len), generator=gen).to(device)
        mask = torch.ones(n_items, item_len, dtype=torch.long).to(device)
        ids = torch.arange(1, n_items + 1).view(batch_users, seq_len + 1).to(device)
        _sync(device)
        started = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=bf16):
            item_embs = model.item_llm(input_ids, mask).view(batch_users, seq_len + 1, -1)  # [B, L+1, D]
            pick = torch.randperm(n_items, device=device)[:512]  # negatives from the batch's own items
            losses = model.losses(
                item_embs[:, :-1], torch.ones(batch_users, seq_len, dtype=torch.long, device=device),
                item_embs[:, 1:], ids[:, 1:], Candidates(ids.flatten()[pick], item_embs.flatten(0, 1)[pick]),
            )
        losses.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        step_times.append(time.perf_counter() - started)
    warm = step_times[1:] or step_times  # the first step pays for kernels' compilation and allocation
    step_s = sum(warm) / len(warm)
    flops = train_flops(model, n_items * item_len, item_len, seq_len, batch_users)

    model.eval()
    token_ids = torch.randint(1, vocab, (embed_items, item_len), generator=gen).tolist()
    # warm-up at the timed batch shape and precision: a first pass at new shapes pays for kernel selection
    # (an earlier warm-up at batch 64 left the first timed pass 1.7 x slower than a later one)
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=bf16):
        embed_token_ids(model.item_llm, token_ids[:256], tokenizer.pad_token_id, batch_size=256)
    _sync(device)
    started = time.perf_counter()
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=bf16):
        vectors = embed_token_ids(model.item_llm, token_ids, tokenizer.pad_token_id, batch_size=256)
    _sync(device)
    embed_s = time.perf_counter() - started
    embed_flops = 2 * non_embedding_params(model.item_llm) * embed_items * item_len

    peak = peak_tflops * 1e12 if peak_tflops else matmul_peak_flops(device, amp_dtype if device.type == "cuda" else torch.float32,
                                                                     n=8192 if device.type == "cuda" else 1024)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shape": shape, "dtype": str(amp_dtype), "batch_users": batch_users, "seq_len": seq_len, "item_len": item_len,
        "params_item_llm": non_embedding_params(model.item_llm), "params_user_llm": non_embedding_params(model.user_llm),
        "step_seconds": round(step_s, 4), "train_tokens_per_s": round(n_items * item_len / step_s),
        "train_tflops": round(flops / step_s / 1e12, 2), "train_mfu": round(flops / step_s / peak, 4),
        "last_loss": round(float(losses.total.detach()), 4),
        "embed_items_per_s": round(embed_items / embed_s, 1), "embed_mfu": round(embed_flops / embed_s / peak, 4),
        "embedding_finite": bool(torch.isfinite(torch.from_numpy(vectors)).all()),
        "peak_tflops": round(peak / 1e12, 1), "peak_source": "given" if peak_tflops else "measured matmul",
        "max_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


def _toy_catalogue(folder: Path, num_items: int = 200, num_users: int = 240, length: int = 14) -> tuple[Path, Path]:
    """Users walking the item cycle from random starts (the next item is a function of the current one)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    items = pd.DataFrame({"item_id": np.arange(1, num_items + 1),
                          "title": [f"item number {i}" for i in range(1, num_items + 1)],
                          "tags": [["even" if i % 2 == 0 else "odd"] for i in range(1, num_items + 1)]})
    rows = [{"user_id": f"u{u}", "item_id": (start + t) % num_items + 1, "timestamp": 1_700_000_000 + 60 * t}
            for u, start in enumerate(rng.integers(num_items, size=num_users)) for t in range(length)]
    folder.mkdir(parents=True, exist_ok=True)
    items.to_parquet(folder / "items.parquet")
    pd.DataFrame(rows).to_parquet(folder / "interactions.parquet")
    return folder / "items.parquet", folder / "interactions.parquet"


def _train_cli(config: Path, ds_json: Path, device: str, log: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The trainer's own entry point in a fresh process (its own DeepSpeed process group)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    if device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "trainer.train", "--config", str(config), "--deepspeed", "--deepspeed_config",
           str(ds_json), "--no-resume", *[a for o in overrides for a in ("--set", o)]]
    with log.open("w") as out:
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200)


def _run_summary(proc: subprocess.CompletedProcess, run_dir: Path, log: Path) -> dict:
    if proc.returncode != 0:
        return {"ok": False, "rc": proc.returncode, "log_tail": log.read_text()[-3000:]}
    result = json.loads((run_dir / "result.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    tp = result["throughput"]
    return {"ok": True, "device": tp["device"], "bf16": tp["bf16"], "gradient_accumulation_steps": tp["gradient_accumulation_steps"],
            "micro_batches": [r["micro_batches"] for r in steps], "steps": len(steps),
            "first_loss": steps[0]["loss"] if steps else None, "last_loss": steps[-1]["loss"] if steps else None,
            "valid_ndcg@10": result["valid"].get("ndcg@10"), "positions_per_s": round(tp["positions_per_s"]),
            "fraction_of_matmul_peak": round(tp["fraction_of_matmul_peak"], 4)}


# stage 2 from stage 1's bundle, with ID rows beside the cached catalogue (a float32 buffer under bf16)
STAGE2_OVERRIDES = ("train.stage=2", "train.freeze_bundle=false", "train.text_plus_id=true")


def trainer_check(device: str, workdir: Path | None = None, steps: int = 6) -> dict:
    """Stage 1 then stage 2 through the trainer's CLI on `device` (see the module docstring). `ok` is
    true when both ran on the device asked for, with the precision `auto` picks there, two micro-batches
    per optimizer step and finite losses."""
    import yaml

    from trainer.deepspeed_setup import bf16_available

    workdir = Path(workdir or tempfile.mkdtemp(prefix="gpu_check_trainer_"))
    items, inter = _toy_catalogue(workdir / "data")
    cfg = {
        "seed": 0,
        "data": {"source": "files", "items_path": str(items), "interactions_path": str(inter), "max_seq_len": 12},
        "item_text": {"prompt": "", "max_item_tokens": 32},
        # an adapter, and ID rows in stage 2: the cached catalogue (a float32 buffer under bf16) then goes
        # through a bf16 matmul and sits beside bf16 rows
        "item_llm": {"source": "tiny_random", "tiny": SHAPES["tiny"], "adapter": "linear"},
        "user_llm": {"source": "tiny_random", "tiny": {**SHAPES["tiny"], "seed": 1}},
        "loss": {"temperature_init": 0.1, "nce_threshold": 1.0},
        "train": {"output_dir": str(workdir / "stage1"), "epochs": 1, "max_steps": steps, "batch_size": 16,
                  "windows": "last", "stage1_max_seq_len": 8, "checkpoint_every_steps": 3, "warmup_steps": 2,
                  "lr": 1e-3, "precision": "auto"},
    }
    config = workdir / "train.yaml"
    config.write_text(yaml.safe_dump(cfg))
    ds_json = workdir / "ds.json"
    ds_json.write_text(json.dumps({"gradient_accumulation_steps": 2, "zero_optimization": {"stage": 2}}))
    report: dict = {}
    log1 = workdir / "stage1.log"
    report["stage1"] = _run_summary(_train_cli(config, ds_json, device, log1), workdir / "stage1", log1)
    bundles = sorted((workdir / "stage1" / "bundles").glob("*/manifest.json"))
    if report["stage1"]["ok"] and bundles:
        log2 = workdir / "stage2.log"
        proc = _train_cli(config, ds_json, device, log2, *STAGE2_OVERRIDES, f"train.init_bundle={bundles[-1].parent}",
                          f"train.output_dir={workdir / 'stage2'}")
        report["stage2"] = _run_summary(proc, workdir / "stage2", log2)
    want_bf16 = device != "cpu" and bf16_available()
    runs = [report.get("stage1", {}), report.get("stage2", {})]
    report["ok"] = all(
        r.get("ok") and r["device"].split(":")[0] == device.split(":")[0] and r["bf16"] == want_bf16
        and r["gradient_accumulation_steps"] == 2 and r["micro_batches"][0] == 2
        and r["last_loss"] is not None and r["last_loss"] == r["last_loss"]  # not NaN
        for r in runs
    )
    report["workdir"] = str(workdir)
    report["config"] = {k: v for k, v in cfg.items() if k != "data"}  # what ran (paths left out)
    report["stage2_overrides"] = [*STAGE2_OVERRIDES, "train.init_bundle=<stage 1's bundle>"]
    return report


def _batches(text: str) -> list[tuple[int, int]]:
    """"4x10,16x20" -> [(4, 10), (16, 20)]: users per step x sequence length."""
    try:
        out = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        out = []
    if not out or any(len(b) != 2 or min(b) < 1 for b in out):
        raise argparse.ArgumentTypeError(f"--batches {text!r}: expected USERSxSEQ_LEN[,USERSxSEQ_LEN...], e.g. 4x10,16x20")
    return out


def _command(argv: list[str]) -> str:
    """The command line as run, less --note (its text is stored beside it)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            kept.append(a)
    return " ".join(["python -m benchmarks.gpu_check", *kept])


def _software() -> dict:
    import transformers

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import deepspeed

        versions["deepspeed"] = deepspeed.__version__
    except ImportError:
        versions["deepspeed"] = None
    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
    return versions


def markdown(doc: dict) -> str:
    """BENCHMARKS.md's "GPU check" table from benchmarks/results/gpu_check.json."""
    sw = doc["software"]
    first = doc["runs"][0]  # device, dtype, shape and item length are the same in every run of one check
    lines = [
        f"{first['device']}, {first['dtype'].replace('torch.', '')}, random Llamas of {first['shape']}'s "
        f"shape as Item and User LLM ({first['params_item_llm'] / 1e6:,.0f} M non-embedding parameters each), "
        f"{first['item_len']} tokens an item; peak = a {first['peak_source']} "
        f"({', '.join(str(r['peak_tflops']) for r in doc['runs'])} TFLOP/s). torch {sw['torch']}, transformers "
        f"{sw['transformers']}, DeepSpeed {sw['deepspeed']}, CUDA {sw.get('cuda')}; {doc['date']}, load average "
        f"(1, 5, 15 min) {doc['load']} on the GPU host. Command: `{doc['command']}`",
        "",
        "| users x sequence | item tokens a step | step (s) | train tokens/s | train TFLOP/s | train MFU "
        "| embed items/s | embed MFU | peak GPU memory (GiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        tokens = r["batch_users"] * (r["seq_len"] + 1) * r["item_len"]
        lines.append(f"| {r['batch_users']} x {r['seq_len']} | {tokens:,} | {r['step_seconds']} | {r['train_tokens_per_s']:,} "
                     f"| {r['train_tflops']} | {r['train_mfu']:.1%} | {r['embed_items_per_s']:,} | {r['embed_mfu']:.1%} "
                     f"| {r['max_memory_gb']} |")
    if doc.get("note"):
        lines += ["", doc["note"]]
    t = doc.get("trainer")
    if t:
        lines.append("")
        lines.append(f"The trainer's CLI on the same device (tiny random Llamas, DeepSpeed ZeRO-2, 2 micro-batches a step, "
                     f"`train.precision: auto`): **{'passed' if t['ok'] else 'FAILED'}**.")
        lines.append("")
        lines.append("| run | device | bf16 | micro-batches a step | steps | first loss | last loss | valid NDCG@10 |")
        lines.append("|---|---|---|---|---|---|---|---|")
        def num(v):
            return "" if v is None else f"{v:.4f}"

        for name in ("stage1", "stage2"):
            r = t.get(name)
            if r is None:
                lines.append(f"| {name} | not run | | | | | | |")
            elif r.get("ok"):
                lines.append(f"| {name} | {r['device']} | {r['bf16']} | {r['gradient_accumulation_steps']} | {r['steps']} "
                             f"| {num(r['first_loss'])} | {num(r['last_loss'])} | {num(r['valid_ndcg@10'])} |")
            else:
                lines.append(f"| {name} | failed (rc {r.get('rc')}) | | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a smoke run; no figures worth keeping)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batches", type=_batches, default=_batches("4x10,16x20"),
                   help="training batches to time, USERSxSEQ_LEN comma-separated (default 4x10,16x20: the "
                        "smallest step, then one that fills the GPU better)")
    p.add_argument("--item-len", type=int, default=64)
    p.add_argument("--embed-items", type=int, default=2048)
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: measured)")
    p.add_argument("--no-trainer", dest="trainer", action="store_false",
                   help="skip the trainer check (DeepSpeed CLI, accumulation, bf16, placement; on by default on CUDA)")
    p.add_argument("--trainer", dest="trainer", action="store_true", help="run the trainer check on --device cpu too")
    p.add_argument("--note", default="", help="free text kept in the results file (where and how it ran)")
    p.set_defaults(trainer=None)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured (run it where a GPU is, or --device cpu for a smoke run)")
        return 0
    result = {
        "command": _command(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "software": _software(),
        "note": args.note,
        "runs": [run(args.device, args.shape, args.steps, users, seq_len, args.item_len, args.embed_items, args.peak_tflops)
                 for users, seq_len in args.batches],
    }
    if args.trainer if args.trainer is not None else args.device != "cpu":
        result["trainer"] = trainer_check(args.device)
    print(json.dumps(result, indent=2))
    failed = "trainer" in result and not result["trainer"]["ok"]
    if args.device != "cpu":
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
