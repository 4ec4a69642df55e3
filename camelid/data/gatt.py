"""Ghost Attention (Llama-2 §3.3): training data that teaches a system instruction to hold for a whole dialog.

Given a multi-turn dialog [u1, a1, ..., un, an] and an instruction `inst` (a system message such as
"Answer in capital letters only."):

1. Sampling: the answers are sampled with `inst` appended to *every* user message, so each one
   follows it (the model can already follow an instruction it sees in the current turn). A sampled
   answer is kept only if the adherence judge accepts it; otherwise — and always when no sampler is
   given — the proving ground builds it by program: the task's reference answer rewritten to follow
   the instruction (`Instruction.apply`). `build_gatt` reports how many answers came from each.
2. Training: the instruction is kept only in the first turn (as the system message), and the loss is
   zeroed on every token of the earlier turns, assistant answers included: only the last answer (and
   its EOS) is trained. Each dialog gives one sample, cut after a turn k drawn from [min_turn, n].
"""

from __future__ import annotations

import random
from typing import Callable

from camelid.chat_format import encode_dialog_with_mask

Answerer = Callable[[list[list[dict]]], list[str]]  # dialogs ending in a user turn -> one answer each


def gatt_sample(tokenizer, system: str, users: list[str], answers: list[str]) -> tuple[list[int], list[int]]:
    """(ids, mask) of one GAtt training dialog: `system` in the first turn only, loss on the last answer only."""
    if len(users) != len(answers) or not users:
        raise ValueError("gatt_sample needs one answer per user turn")
    msgs = [{"role": "system", "content": system}]
    for u, a in zip(users, answers):
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return encode_dialog_with_mask(tokenizer, msgs, last_turn_only=True)


def model_answerer(model, tokenizer, temperature: float = 0.7, top_p: float = 0.9, max_new_tokens: int = 24,
                   seed: int = 0) -> Answerer:
    """An Answerer that samples from `model` with the batched inference engine."""
    from camelid.tasks.eval import answer_examples
    from camelid.tasks.core import Example

    def answer(dialogs: list[list[dict]]) -> list[str]:
        exs = [Example(messages=d, task="", kind="helpful", reference="") for d in dialogs]
        return answer_examples(model, tokenizer, exs, max_new_tokens=max_new_tokens, temperature=temperature,
                               seed=seed, top_p=top_p)
    return answer


def gatt_answers(dialogs, answerer: Answerer | None = None) -> tuple[list[list[str]], dict]:
    """Answers for every turn of every InstructionDialog (sampled with the instruction in every user turn
    where `answerer` is given and the answer adheres; else built by program)."""
    from camelid.tasks.instructions import judge_adherence

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
    rng = random.Random(f"gatt-cut-{seed}")
    samples = []
    for d, a in zip(dialogs, answers):
        n = len(d.turns)
        k = rng.randint(min(min_turn, n), n)
        users = [t.messages[-1]["content"] for t in d.turns[:k]]
        samples.append(gatt_sample(tokenizer, d.instruction.text, users, a[:k]))
    stats["dialogs"] = len(samples)
    return samples, stats


__all__ = ["gatt_sample", "build_gatt", "gatt_answers", "model_answerer"]
