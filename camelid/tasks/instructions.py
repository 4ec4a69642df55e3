"""System instructions for Ghost Attention (Llama-2 §3.3), each with a program that applies it to an
answer and a judge of adherence.

An instruction must hold for a whole dialog ("answer in capital letters", "end every answer with
'amen'"). The multi-turn dialogs it is tested on draw their user turns from tasks whose answers are
words (so "capital letters" is never satisfied by a bare number).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from camelid.tasks.core import Example, _pool


@dataclass(frozen=True)
class Instruction:
    kind: str  # caps | prefix | suffix
    text: str  # the system message
    word: str = ""

    def apply(self, answer: str) -> str:
        """The answer rewritten to follow the instruction (how the proving ground builds GAtt answers)."""
        a = answer.strip()
        if self.kind == "caps":
            return a.upper()
        if self.kind == "prefix":
            return f"{self.word}, {a}"
        return f"{a} {self.word}"

    def check(self, answer: str) -> bool:
        a = answer.strip()
        if not a:
            return False
        if self.kind == "caps":
            return any(c.isalpha() for c in a) and not any(c.islower() for c in a)
        words = re.findall(r"[A-Za-z']+", a)
        if not words:
            return False
        if self.kind == "prefix":
            return words[0].lower() == self.word.lower()
        return words[-1].lower() == self.word.lower()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "text": self.text, "word": self.word}


INSTRUCTIONS: list[Instruction] = (
    [Instruction("caps", "Answer in capital letters only."),
     Instruction("caps", "Always reply in upper case.")]
    + [Instruction("prefix", f"Begin every answer with the word '{w}'.", w) for w in ("Verily", "Indeed", "Behold")]
    + [Instruction("suffix", f"End every answer with the word '{w}'.", w) for w in ("amen", "friend", "forever")]
)


def judge_adherence(instruction: Instruction | dict, answer: str) -> float:
    """1.0 when `answer` follows the system instruction, else 0.0."""
    if isinstance(instruction, dict):
        instruction = Instruction(**instruction)
    return 1.0 if instruction.check(answer) else 0.0


@dataclass
class InstructionDialog:
    """A system instruction and the user turns of a multi-turn dialog (each an Example with its reference)."""
    instruction: Instruction
    turns: list[Example] = field(default_factory=list)

    def references(self) -> list[str]:
        """The reference answers rewritten to follow the instruction."""
        return [self.instruction.apply(t.reference) for t in self.turns]

    def messages(self, answers: list[str], upto: int | None = None, instruction_every_turn: bool = False) -> list[dict]:
        """The dialog up to turn `upto` (default: all), with the instruction as the system message.

        With len(answers) == upto - 1 it ends in the open user turn `upto` (a prompt). With
        instruction_every_turn the instruction is also appended to every later user message (how GAtt
        samples its answers).
        """
        upto = len(self.turns) if upto is None else upto
        msgs = [{"role": "system", "content": self.instruction.text}]
        for i, t in enumerate(self.turns[:upto]):
            user = t.messages[-1]["content"]
            if instruction_every_turn and i > 0:
                user = f"{user} {self.instruction.text}"
            msgs.append({"role": "user", "content": user})
            if i < len(answers):
                msgs.append({"role": "assistant", "content": answers[i]})
        return msgs


def make_instruction_dialogs(split: str, n: int, seed: int, turns: int = 5) -> list[InstructionDialog]:
    """n dialogs of `turns` user turns each (word-answer tasks, held-out items for split="test")."""
    from camelid.tasks import TASKS

    rng = random.Random(f"gatt-{split}-{seed}")
    tasks = [t for t in TASKS.values() if t.words_answer and t.name != "uppercase"]
    _pool([], split)  # validates the split name
    out = []
    for i in range(n):
        ins = INSTRUCTIONS[i % len(INSTRUCTIONS)]
        out.append(InstructionDialog(ins, [rng.choice(tasks).make(split, rng) for _ in range(turns)]))
    return out
