"""`camelid quickstart`: the recipe end to end on a laptop CPU, with data that came with `pip install`.

`PIPELINE` below is the recipe as a list of steps, read top to bottom: each runs one stage (the same code
as its `camelid` command) from a shipped recipe into its own folder of the output directory, fed by the
outputs of earlier steps through its typed config, and is skipped when it already finished with the
same settings (so an interrupted quickstart picks up where it stopped). `--print-commands` prints the
same pipeline as `camelid` commands; `--set STAGE.section.key=value` reaches any stage.

    tokenizer/  SentencePiece BPE with LLaMA's settings, trained on the embedded corpus
    data/       token shards of the embedded mixture, with a held-out split per source
    pretrain/   a small LLaMA pre-trained from scratch (metrics, checkpoints, loss plot, final model)
    sft/        chat fine-tuning on the proving ground (camelid.tasks); held-out accuracy of base and SFT
    rm-helpful/ rm-safety/   round 1's reward models, with their accuracy by rating (Llama-2 Table 8) and on
                the policy's own answers
    rs/         round 1's rejection-sampling fine-tuning on the combined reward (plus the policy's log-probability)
    rm-helpful-2/ rs-2/      round 2 (Llama-2's iterative RLHF): the helpfulness RM on new pairs of the round-1
                policy's answers plus round 1's, then rejection sampling on it
    ppo/        PPO on round 2's reward with a KL penalty to its starting policy
    gatt/       Ghost Attention fine-tuning of the PPO policy
    report_card.md / .json   every stage measured the same way on 540 held-out prompts, paired with SFT

Under torchrun (`torchrun --nproc_per_node N -m camelid quickstart`) one process group spans the whole
pipeline: every stage runs distributed (data split by rank, trained models sharded); the steps that
cannot split their work (tokenizer, data shards, plots, samples, the report card) run on rank 0 while
the others wait, and rank 0 alone writes and prints.
"""

from __future__ import annotations

import itertools
import json
import random
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from camelid.config import ConfigError, apply_overrides, from_dict, load_config, replace_keys, validate

VOCAB_SIZE = 4096
SMOKE = {  # every stage at toy size: proves the pipeline works in seconds (the test suite runs this); micro-batches
    # of half a batch, so that it runs under torchrun on 2 ranks with the same global batches
    "vocab_size": 512,
    "pretrain": ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
                 "model.ffn_hidden_dim=128", "data.seq_len=64", "train.micro_batch=8", "train.batch_tokens=1024",
                 "train.max_steps=20", "train.warmup_steps=2", "log.every=5", "log.val_every=10",
                 "log.val_batches=1", "checkpoint.every=10"],
    "sft": ["sft.dialogs=240", "sft.instruction_dialogs=24", "sft.batch_size=8", "train.micro_batch=4",
            "train.max_steps=6", "sft.seq_len=128", "sft.val_n=8", "sft.eval_n=20", "sft.eval_gatt=2", "sft.gatt_turns=3"],
    "rm": ["rm.prompts=24", "rm.val_prompts=16", "rm.samples=1", "rm.batch_pairs=16", "rm.epochs=1",
           "rm.max_len=96", "train.micro_batch=8", "rm.onpolicy_prompts=10"],
    "rs": ["rs.prompts_per_iteration=16", "rs.k=2", "rs.max_new_tokens=8", "rs.eval_n=8", "rs.batch_size=8",
           "rs.epochs=4", "train.micro_batch=4"],
    "ppo": ["ppo.iterations=2", "ppo.rollout_batch=16", "ppo.minibatch=8", "ppo.max_new_tokens=8",
            "ppo.eval_every=1", "ppo.eval_n=8", "train.micro_batch=4"],
    "gatt": ["sft.dialogs=120", "sft.instruction_dialogs=16", "sft.gatt=16", "sft.batch_size=8", "train.micro_batch=4",
             "train.max_steps=4",
             "sft.seq_len=128", "sft.val_n=8", "sft.eval_n=20", "sft.eval_gatt=2", "sft.gatt_turns=3"],
    "report_n": 20,
}


# the helpfulness reward models collect their pairs task by task (their recipes set rm.per_task)
SMOKE["rm-helpful"] = SMOKE["rm-2"] = SMOKE["rm"] + ["rm.per_task=4", "rm.max_prompts_per_task=16", "rm.samples=2"]


@dataclass(frozen=True)
class Step:
    """One line of the pipeline: a stage run into OUT/name from a shipped recipe, fed by earlier outputs."""
    name: str  # its folder under --out, and the prefix of `--set name.section.key=value`
    title: str
    stage: str = ""  # the camelid command that runs it (pretrain, sft, rm, rs, ppo); empty: a step of its own
    recipe: str = ""
    inputs: dict = field(default_factory=dict)  # config key -> an earlier step's output, relative to --out
    values: dict = field(default_factory=dict)  # config key -> a fixed setting of this step
    group: str = ""  # `--set group.key=...` reaches every step of the group (both reward models)


# The recipe, top to bottom. `camelid quickstart --print-commands` prints it as camelid commands.
PIPELINE = [
    Step("tokenizer", "1. tokenizer: SentencePiece BPE, digits split, byte fallback"),
    Step("data", "2. data: tokenize the embedded corpus into shards (a miniature of LLaMA-1's mixture)"),
    Step("pretrain", "3. pre-training: a small LLaMA from scratch (AdamW 0.9/0.95, cosine to 10%, clip 1.0)",
         "pretrain", "quickstart", inputs={"data.dir": "data", "data.tokenizer": "tokenizer/tokenizer.model"}),
    Step("sft", "4. supervised fine-tuning (Llama-2 SFT): chat format, loss on answers only, packed rows; "
                "held-out proving-ground accuracy before and after",
         "sft", "quickstart-sft", inputs={"model.init_from": "pretrain/model"}),
    Step("rm-helpful", "5. reward models, round 1 (Llama-2 §3.2.2): helpfulness, on pairs of the SFT model's own "
                       "answers, every task its share", "rm", "quickstart-rm", inputs={"model.init_from": "sft/model"},
         values={"rm.kind": "helpful"}, group="rm"),
    Step("rm-safety", "5. reward models, round 1 (Llama-2 §3.2.2): safety, on SFT and base-model answers",
         "rm", "quickstart-rm-safety", inputs={"model.init_from": "sft/model", "rm.base_model": "pretrain/model"},
         values={"rm.kind": "safety"}, group="rm"),
    Step("rs", "6. rejection sampling, round 1: best of K by the combined reward + log pi, pooled, fine-tuned",
         "rs", "quickstart-rs", inputs={"model.init_from": "sft/model", "rs.reward_helpful": "rm-helpful/model",
                                        "rs.reward_safety": "rm-safety/model"}),
    Step("rm-helpful-2", "7. helpfulness reward model, round 2: new pairs of the round-1 policy's answers, trained "
                         "on with round 1's", "rm", "quickstart-rm-2",
         inputs={"model.init_from": "rm-helpful/model", "rm.policy": "rs/model",
                 "rm.previous": "rm-helpful/pairs_train.jsonl"}, values={"rm.kind": "helpful"}, group="rm-2"),
    Step("rs-2", "8. rejection sampling, round 2, on the round-2 reward model",
         "rs", "quickstart-rs-2", inputs={"model.init_from": "rs/model", "rs.reward_helpful": "rm-helpful-2/model",
                                        "rs.reward_safety": "rm-safety/model"}, values={"rs.seed": 1}),
    Step("ppo", "9. PPO, round 2: combined reward, each answer against its prompt's others, minus beta * KL",
         "ppo", "quickstart-ppo", inputs={"model.init_from": "rs-2/model", "ppo.reward_helpful": "rm-helpful-2/model",
                                          "ppo.reward_safety": "rm-safety/model"}),
    Step("gatt", "10. Ghost Attention: the system instruction kept in turn 1 only, the loss on the last turn only",
         "sft", "quickstart-gatt", inputs={"model.init_from": "ppo/model"}),
    Step("report_card", "11. report card: every stage's policy on the same held-out prompts"),
]


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


def vocab_size(smoke: bool) -> int:
    return SMOKE["vocab_size"] if smoke else VOCAB_SIZE


def stages() -> dict:
    from camelid.train.pretrain import PRETRAIN
    from camelid.rlhf.ppo import PPO
    from camelid.rlhf.rs import RS
    from camelid.train.reward import RM
    from camelid.train.sft import SFT

    return {"pretrain": PRETRAIN, "sft": SFT, "rm": RM, "rs": RS, "ppo": PPO}


def stage_classes() -> dict:
    return {name: stage.config for name, stage in stages().items()}


def route_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """`--set STEP.section.key=value` by step; a group name (rm) reaches each of its steps."""
    names = {st.name for st in PIPELINE if st.stage} | {st.group for st in PIPELINE if st.group}
    routed: dict[str, list[str]] = {}
    for item in overrides:
        head, _, rest = item.partition(".")
        if head not in names or "=" not in rest:
            raise ConfigError(f"--set {item}: name the stage first, as STAGE.section.key=value (stages: "
                              f"{', '.join(sorted(names))}), e.g. --set pretrain.train.max_steps=50")
        routed.setdefault(head, []).append(rest)
    return routed


def smoke_sets(step: Step, smoke: bool) -> list[str]:
    return list(SMOKE.get(step.name) or SMOKE.get(step.group) or SMOKE.get(step.stage) or []) if smoke else []


def user_sets(step: Step, routed: dict) -> list[str]:
    return routed.get(step.group, []) + routed.get(step.name, [])


def step_config(step: Step, out: Path, smoke: bool, routed: dict):
    """A step's typed config: its class's defaults < its recipe < the smoke sizes < what the pipeline feeds it
    (earlier outputs, fixed values) < the user's --set for it."""
    cls = stage_classes()[step.stage]
    cfg = load_config(step.recipe, smoke_sets(step, smoke), cls=cls)
    cfg = replace_keys(cfg, {**{k: str(out / v) for k, v in step.inputs.items()}, **step.values})
    cfg = from_dict(cls, apply_overrides({}, user_sets(step, routed)), prefix=f"{step.name}.", base=cfg)
    validate(cfg)
    return cfg


def step_command(step: Step, out: Path, smoke: bool, routed: dict) -> str:
    """The camelid command that does what this step does."""
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    if step.name == "tokenizer":
        vocab = vocab_size(smoke)
        return (f"camelid tokenizer train --corpus embedded --vocab-size {vocab} --out {q(out / 'tokenizer')}"
                + (" --max-lines 20000" if smoke else ""))
    if step.name == "data":
        return f"camelid data prepare --tokenizer {q(out / 'tokenizer' / 'tokenizer.model')} --out {q(out / 'data')}"
    if not step.stage:
        return f"camelid quickstart --out {q(out)}{' --smoke' if smoke else ''}   # every stage above is done: " \
               f"only the report card is made"
    sets = (smoke_sets(step, smoke) + [f"{k}={out / v}" for k, v in step.inputs.items()]
            + [f"{k}={v}" for k, v in step.values.items()] + user_sets(step, routed))
    resume = " --resume" if step.stage != "rs" else ""  # rs always continues after its finished iterations
    return (f"camelid {step.stage} --config {step.recipe} --out {q(out / step.name)}{resume}"
            + "".join(f" --set {q(x)}" for x in sets))


def print_commands(out: Path, smoke: bool, overrides: list[str]) -> None:
    routed = route_overrides(overrides)
    print("# camelid quickstart as camelid commands (run them top to bottom; each continues where it stopped)")
    for step in PIPELINE:
        print(f"\n# {step.title}\n{step_command(step, out, smoke, routed)}")


def quickstart(out: str | Path = "runs/quickstart", smoke: bool = False, overrides: list[str] | None = None) -> dict:
    """Run PIPELINE into `out`, each step in its own folder; a finished step is skipped when run again."""
    from camelid.parallel.launch import pipeline_session

    out = Path(out)
    routed = route_overrides(overrides or [])
    out.mkdir(parents=True, exist_ok=True)
    with pipeline_session() as rank:
        if rank == 0:
            return run_pipeline(out, smoke, routed)
        for step in PIPELINE:  # the other ranks take their part in each stage and wait for the rest
            follow_step(step, out, smoke, routed)
        return {}


def run_pipeline(out: Path, smoke: bool, routed: dict) -> dict:
    timings = StageTimes(out / "timings.json")
    spent: dict[str, float] = {}
    report: dict = {"out": str(out), "smoke": smoke}
    for step in PIPELINE:
        _say(step.title)
        t = time.perf_counter()
        report[step.name] = run_step(step, out, smoke, routed, timings)
        key = step.group or step.name  # the report card times both reward models as one stage
        spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
        timings[key] = spent[key]
    report["seconds"] = dict(timings)
    report["total_seconds"] = sum(timings.values())
    (out / "quickstart.json").write_text(json.dumps(report, indent=2) + "\n")
    _say(f"done in {report['total_seconds']:.0f}s: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"next: camelid plot {out / 'pretrain'}   |   camelid convert {out / 'pretrain' / 'model'} "
          f"{out / 'hf'} --to hf")
    return report


def follow_step(step: Step, out: Path, smoke: bool, routed: dict) -> None:
    """A step on a rank other than 0 under torchrun: its share of a stage; at a step of rank 0's alone, a wait."""
    from camelid.parallel.collectives import barrier
    from camelid.train.stage import run_stage

    if not step.stage:
        barrier()  # rank 0 makes the tokenizer, the data shards or the report card
        return
    run_stage(stages()[step.stage], step_config(step, out, smoke, routed), out / step.name, resume=True, quiet=True)


def run_step(step: Step, out: Path, smoke: bool, routed: dict, timings: dict) -> dict:
    if not step.stage:  # under torchrun the other ranks wait for it (follow_step)
        from camelid.parallel.collectives import rank0_only

        with rank0_only():
            return own_step(step, out, smoke, timings)
    cfg = step_config(step, out, smoke, routed)
    return REPORTS[step.stage](step, cfg, out / step.name)


def own_step(step: Step, out: Path, smoke: bool, timings: dict) -> dict:
    """The steps that are no stage: tokenizer, data and report card."""
    if step.name == "tokenizer":
        vocab = vocab_size(smoke)
        tok = stage_tokenizer(out / "tokenizer", vocab, max_lines=20_000 if smoke else None)
        sample = "In the beginning God created the heaven and the earth, in 4004 BC."
        print(f"{tok.model_path}: {vocab:,} pieces; {sample!r} -> {len(tok.encode(sample))} tokens")
        return {"path": str(tok.model_path), "vocab_size": vocab}
    if step.name == "data":
        manifest = stage_data(out / "data", out / "tokenizer" / "tokenizer.model")
        for name, src in manifest["sources"].items():
            print(f"  {name:<20} {src['tokens']:>10,} tokens  weight {src['weight']:.2f}")
        return {"sources": {k: v["tokens"] for k, v in manifest["sources"].items()}}
    return stage_report_card(out, smoke, timings)


def pretrain_step(step: Step, cfg, run: Path) -> dict:
    from camelid.plot import plot_runs
    from camelid.runlog import read_metrics
    from camelid.train.pretrain import pretrain

    summary = pretrain(cfg, run, resume=True)
    val = [r for r in read_metrics(run) if r.get("split") == "val"]
    plot = plot_runs([run], run / "loss.png", title="quickstart pre-training")
    result = {"params": summary["n_params"], "tokens": summary["tokens"],
              "val_ppl_before": val[0]["ppl"] if val else None, "val_ppl_after": val[-1]["ppl"] if val else None,
              "plot": str(plot), "model": str(run / "model")}
    print(f"validation perplexity: {result['val_ppl_before']:.1f} before training -> "
          f"{result['val_ppl_after']:.1f} after {summary['tokens']:,} tokens; loss plot: {plot}")
    result["sample"] = _sample(run / "model", "And God said")
    return result


def sft_step(step: Step, cfg, run: Path) -> dict:
    """SFT (and GAtt, the same stage on other data); the first SFT also scores its base model."""
    from camelid.tasks.eval import compare_table
    from camelid.train.sft import SFT
    from camelid.train.stage import run_stage

    summary = run_stage(SFT, cfg, run, resume=True)
    if step.name != "sft":
        return {"steps": summary["steps"], "seconds": summary["seconds"], "eval": summary.get("eval")}
    base = base_eval(cfg, run)
    tuned = json.loads((run / "eval.json").read_text())
    print("held-out proving ground (accuracy; greedy answers):")
    print(compare_table({"base": base, "sft": tuned}))
    return {"steps": summary["steps"], "train_seconds": summary["seconds"], "val_loss_before": summary["val_loss_before"],
            "val_loss_after": summary["val_loss_after"], "accuracy_base": base["accuracy"],
            "accuracy_sft": tuned["accuracy"], "tasks_base": base["tasks"], "tasks_sft": tuned["tasks"],
            "refusal_rate_sft": tuned["refusal_rate"], "gatt_adherence_sft": tuned["gatt_adherence"],
            "model": str(run / "model")}


def base_eval(cfg, run: Path) -> dict:
    """The starting model on the held-out proving ground, as SFT's own evaluation measures it (kept in a file)."""
    from camelid.checkpoint import load_checkpoint
    from camelid.fsutil import atomic_write_json
    from camelid.tasks import evaluate

    path = run / "eval_base.json"
    if path.exists():
        return json.loads(path.read_text())
    s = cfg.sft
    ckpt = load_checkpoint(cfg.model.init_from)
    base = evaluate(ckpt.model, ckpt.tokenizer(), split="test", n=s.eval_n, seed=0,
                    gatt_dialogs=s.eval_gatt, gatt_turns=s.gatt_turns)
    atomic_write_json(path, base)
    return base


def rm_step(step: Step, cfg, run: Path) -> dict:
    from camelid.train.reward import RM, format_report
    from camelid.train.stage import run_stage

    report = run_stage(RM, cfg, run, resume=True)
    print(format_report(report, f"{cfg.rm.kind} reward model, held-out accuracy (%) by rating:"))
    return {"accuracy": report["accuracy"], "accuracy_on_policy": report.get("accuracy_on_policy"),
            "calibration": report.get("calibration"),
            "train_pairs": report["train_pairs"], "val_pairs": report.get("val_pairs")}


def policy_step(step: Step, cfg, run: Path) -> dict:
    from camelid.rlhf.ppo import PPO
    from camelid.rlhf.rs import RS
    from camelid.train.stage import run_stage

    return run_stage({"rs": RS, "ppo": PPO}[step.stage], cfg, run, resume=True)


REPORTS = {"pretrain": pretrain_step, "sft": sft_step, "rm": rm_step, "rs": policy_step, "ppo": policy_step}


def _models(out: Path) -> dict[str, Path]:
    """Every model the pipeline makes, by the report card's names."""
    return {"base": out / "pretrain" / "model", **{st.name: out / st.name / "model" for st in PIPELINE
                                                    if st.stage and st.name != "pretrain"}}


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


def stage_report_card(out: Path, smoke: bool, timings: dict) -> dict:
    """Measure base, SFT, RS, PPO and GAtt policies on the same held-out prompts; the RM row has the RMs' accuracy."""
    from camelid.checkpoint import load_checkpoint, load_model
    from camelid.report_card import measure_policy, write_report_card
    from camelid.rlhf.rs import load_scorer

    m = _models(out)
    cache = out / "report_card.json"
    # 540 prompts (54 a task): the paired interval on a stage's gain over SFT is sqrt(3) narrower than at 180
    n = SMOKE["report_n"] if smoke else 540
    card = json.loads(cache.read_text()) if cache.exists() else {}
    # a card measured after the last model changed, on as many prompts, stands
    if not (card.get("n") == n and cache.stat().st_mtime > max((m[k] / "config.json").stat().st_mtime for k in m)):
        sft = load_checkpoint(m["sft"])
        sft_model, tok = sft.model, sft.tokenizer()
        helpful = [st.name for st in PIPELINE if st.stage == "rm" and st.values.get("rm.kind") == "helpful"]
        scorer = load_scorer(str(m[helpful[-1]]), str(m["rm-safety"]), tok, "cpu")  # the newest reward models
        stages = []
        for st in PIPELINE:
            if st.stage == "rm":
                if st.values.get("rm.kind") == "helpful":  # one row per round, for its reward models
                    stages.append(rm_row(out, st, timings))
                continue
            if not st.stage:
                continue
            name = "base" if st.stage == "pretrain" else st.name
            row = measure_policy(load_model(m[name]), tok, scorer, sft_model, n=n, seed=0,
                                 gatt_dialogs=6 if smoke else 24)
            stages.append({"name": name, "seconds": timings.get(st.name), **row})
        stages.append(best_of_n_row(out, sft_model, tok, scorer, n))
        write_report_card(stages, out, {"smoke": smoke, "n": n})
        card = json.loads(cache.read_text())
    from camelid.report_card import PROMPTS_FILE, render
    print(render(card["stages"]))
    print(f"written to {out / 'report_card.md'} and {cache} (per-prompt results: {out / PROMPTS_FILE})")
    return card


def best_of_n_row(out: Path, sft_model, tok, scorer, n: int, k: int = 4) -> dict:
    """Best of k SFT answers by the newest reward, picked as this run's rejection sampling picked (its temperature
    and log-probability weight): does the reward find better answers than the SFT model's greedy one?"""
    from camelid.rlhf.best_of_n import measure_best_of_n
    from camelid.rlhf.rs import load_rs_config

    r = load_rs_config(out / "rs" / "config.toml").rs
    t0 = time.perf_counter()
    row = measure_best_of_n(sft_model, tok, scorer, k, r.temperature, r.logprob_weight, n_prompts=n, seed=0)
    return {"name": f"sft best-of-{k}", **row, "seconds": time.perf_counter() - t0}


def rm_row(out: Path, step: Step, timings: dict) -> dict:
    """A round's reward models on the report card: held-out pair accuracy, and on the policy's own answers."""
    group = [st for st in PIPELINE if st.stage == "rm" and st.group == step.group]
    reports = {st.values["rm.kind"]: json.loads((out / st.name / "rm_report.json").read_text()) for st in group}
    return {"name": step.group, "seconds": timings.get(step.group),
            "rm_accuracy": {k: r["accuracy"]["average"] for k, r in reports.items()},
            "rm_accuracy_on_policy": {k: r.get("accuracy_on_policy") for k, r in reports.items()}}


def _sample(model_dir: Path, prompt: str, max_new_tokens: int = 40) -> str | None:
    try:
        from camelid.infer import generate
    except ImportError:
        return None
    from camelid.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model_dir)
    model, tok = ckpt.model, ckpt.tokenizer()
    ids = generate(model, [tok.encode(prompt, bos=True)], max_new_tokens=max_new_tokens, temperature=0.8,
                   top_p=0.95, seed=0, stop_ids=[tok.eos_id])[0]
    text = prompt + tok.decode(ids)
    print(f"sample: {text!r}")
    return text
