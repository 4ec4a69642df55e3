"""Ghost Attention answers (Llama-2 §3.3), sampled and judged for the SFT stage.

The answers of a GAtt dialog are sampled with the instruction appended to *every* user message, so
each one follows it (the model can already follow an instruction it sees in the current turn). A
sampled answer is kept only if the adherence judge accepts it; otherwise — and always when no sampler
is given — the proving ground builds it by program: the task's reference answer rewritten to follow
the instruction (`Instruction.apply`). `build_gatt` reports how many answers came from each, and
encodes the dialogs in the training format of camelid.data.gatt.
"""

from __future__ import annotations

from typing import Callable

from camelid.data.gatt import encode_gatt_dialogs
from camelid.tasks.core import Example
from camelid.tasks.eval import answer_examples
from camelid.tasks.instructions import judge_adherence

Answerer = Callable[[list[list[dict]]], list[str]]  # dialogs ending in a user turn -> one answer each


def model_answerer(model, tokenizer, temperature: float = 0.7, top_p: float = 0.9, max_new_tokens: int = 24,
                   seed: int = 0) -> Answerer:
    """An Answerer that samples from `model` with the batched inference engine."""
    def answer(dialogs: list[list[dict]]) -> list[str]:
        exs = [Example(messages=d, task="", kind="helpful", reference="") for d in dialogs]
        return answer_examples(model, tokenizer, exs, max_new_tokens=max_new_tokens, temperature=temperature,
                               seed=seed, top_p=top_p)
    return answer


def gatt_answers(dialogs, answerer: Answerer | None = None) -> tuple[list[list[str]], dict]:
    """Answers for every turn of every InstructionDialog (sampled with the instruction in every user turn
    where `answerer` is given and the answer adheres; else built by program)."""
    refs = [d.references() for d in dialogs]
    if answerer is None:
        return refs, {"sampled": 0, "constructed": sum(map(len, refs))}
    answers: list[list[str]] = [[] for _ in dialogs]
    sampled = constructed = 0
    turns = max(len(d.turns) for d in dialogs)
    for t in range(1, turns + 1):
        live = [i for i, d in enumerate(dialogs) if len(d.turns) >= t]
        prompts = [dialogs[i].messages(answers[i], upto=t, instruction_every_turn=True) for i in live]
        got = answerer(prompts)
        for i, a in zip(live, got):
            if a.strip() and judge_adherence(dialogs[i].instruction, a):
                answers[i].append(a.strip())
                sampled += 1
            else:
                answers[i].append(refs[i][t - 1])
                constructed += 1
    return answers, {"sampled": sampled, "constructed": constructed}


def build_gatt(tokenizer, dialogs, answerer: Answerer | None = None, min_turn: int = 2,
               seed: int = 0) -> tuple[list[tuple[list[int], list[int]]], dict]:
    """GAtt training samples (ids, mask) from InstructionDialogs, and stats of where the answers came from."""
    answers, stats = gatt_answers(dialogs, answerer)
    samples = encode_gatt_dialogs(tokenizer, dialogs, answers, min_turn=min_turn, seed=seed)
    stats["dialogs"] = len(samples)
    return samples, stats


__all__ = ["Answerer", "model_answerer", "gatt_answers", "build_gatt"]
