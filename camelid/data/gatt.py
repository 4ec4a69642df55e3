"""Ghost Attention (Llama-2 §3.3): the training format that teaches a system instruction to hold for a whole dialog.

Given a multi-turn dialog [u1, a1, ..., un, an] and an instruction `inst` (a system message such as
"Answer in capital letters only.") whose answers were sampled with `inst` appended to *every* user
message (camelid.train.gatt_answers samples them and keeps those the adherence judge accepts), the
instruction is kept only in the first turn (as the system message), and the loss is zeroed on every
token of the earlier turns, assistant answers included: only the last answer (and its EOS) is
trained. Each dialog gives one sample, cut after a turn k drawn from [min_turn, n].
"""

from __future__ import annotations

import random

from camelid.chat_format import encode_dialog_with_mask


def gatt_sample(tokenizer, system: str, users: list[str], answers: list[str]) -> tuple[list[int], list[int]]:
    """(ids, mask) of one GAtt training dialog: `system` in the first turn only, loss on the last answer only."""
    if len(users) != len(answers) or not users:
        raise ValueError("gatt_sample needs one answer per user turn")
    msgs = [{"role": "system", "content": system}]
    for u, a in zip(users, answers):
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return encode_dialog_with_mask(tokenizer, msgs, last_turn_only=True)


def encode_gatt_dialogs(tokenizer, dialogs, answers: list[list[str]], min_turn: int = 2,
                        seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """GAtt training samples (ids, mask), one per InstructionDialog (`.turns`, `.instruction.text`) with
    its answers, each cut after a turn drawn from [min_turn, n] (deterministic in `seed`)."""
    rng = random.Random(f"gatt-cut-{seed}")
    samples = []
    for d, a in zip(dialogs, answers):
        n = len(d.turns)
        k = rng.randint(min(min_turn, n), n)
        users = [t.messages[-1]["content"] for t in d.turns[:k]]
        samples.append(gatt_sample(tokenizer, d.instruction.text, users, a[:k]))
    return samples


__all__ = ["gatt_sample", "encode_gatt_dialogs"]
