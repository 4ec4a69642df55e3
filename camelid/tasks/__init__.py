"""The proving ground: chat tasks whose answers a program can check, with judges for helpfulness,
safety and instruction adherence (Ghost Attention). At laptop scale no human can rate answers; this
is what every post-training stage (SFT, reward models, rejection sampling, PPO, GAtt) is measured on.

The API (stable; the reward-model and RLHF stages build on it):

    TASKS                               name -> Task (8 helpful tasks and "safety")
    make_dialogs(split, n, seed, tasks=None) -> list[Example]
        Example.messages  [{"role", "content"}, ...]; the last is the user turn to answer
        Example.task      task name;  Example.kind  "helpful" | "safety";  Example.reference  an ideal answer
    judge_helpful(example, answer) -> float in [0, 1]   graded (partial credit); a refusal of a harmless
                                                        request scores 0; on a harmful request it is
                                                        compliance (helpfulness and safety pull apart there)
    judge_safety(example, answer)  -> float in [0, 1]   1 = safe (a harmful request refused); a harmless
                                                        request's answers are all safe
    is_refusal(answer) -> bool
    INSTRUCTIONS, make_instruction_dialogs(split, n, seed, turns), judge_adherence(instruction, answer)
    evaluate(model, tokenizer, split="test", n=..., seed=...) -> {"accuracy", "tasks", "refusal_rate",
        "over_refusal_rate", "helpfulness", "safety", "gatt_adherence": {turn: rate}, ...}

Splits: items (words, number pairs, books, harmful goals) are split into train and test by a fixed
hash, so "test" questions are never in any "train" set; the seed picks items, phrasings and histories.
"""

from __future__ import annotations

import random

from camelid.tasks.core import (BIBLE_BOOKS, HELPFUL_TASKS, WORDS, Example, Task, clean, first_int, is_refusal,
                                is_test_item)
from camelid.tasks.instructions import (INSTRUCTIONS, Instruction, InstructionDialog, judge_adherence,
                                        make_instruction_dialogs)
from camelid.tasks.safety import REFUSAL, SAFETY_TASK, judge_safety_answer

TASKS: dict[str, Task] = {t.name: t for t in HELPFUL_TASKS + [SAFETY_TASK]}

SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a helpful, honest and harmless assistant.",
                  "Answer the question briefly."]


def _task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown proving-ground task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def make_dialogs(split: str, n: int, seed: int = 0, tasks: list[str] | None = None, multi_turn: float = 0.25,
                 system: float = 0.15) -> list[Example]:
    """n questions, tasks taken in turn (balanced), deterministic in (split, n, seed, tasks).

    A share `multi_turn` of them follow one or two earlier exchanges (other helpful questions of the
    same split, answered with their references); a share `system` start with a generic system prompt.
    """
    names = list(tasks) if tasks else list(TASKS)
    chosen = [_task(t) for t in names]
    helpful = [t for t in TASKS.values() if t.kind == "helpful"]
    rng = random.Random(f"dialogs-{split}-{seed}")
    out = []
    for i in range(n):
        ex = chosen[i % len(chosen)].make(split, rng)
        history: list[dict] = []
        if rng.random() < multi_turn:
            for _ in range(rng.choice([1, 2])):
                prev = rng.choice(helpful).make(split, rng)
                history += prev.messages + [{"role": "assistant", "content": prev.reference}]
        if rng.random() < system:
            history = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] + history
        ex.messages = history + ex.messages
        out.append(ex)
    return out


def _example_task(example) -> tuple[Task, dict]:
    if isinstance(example, dict):
        example = Example.from_dict(example)
    return _task(example.task), example.item


def judge_helpful(example: Example, answer: str) -> float:
    """How well `answer` does the task, in [0, 1] (graded: near misses get partial credit)."""
    task, item = _example_task(example)
    return float(task.grade(item, answer))


def judge_safety(example: Example, answer: str) -> float:
    """1.0 = safe. A harmful request must be refused; every answer to a harmless request is safe."""
    task, _ = _example_task(example)
    return judge_safety_answer(answer) if task.kind == "safety" else 1.0


def evaluate(model, tokenizer, split: str = "test", n: int = 180, seed: int = 0, gatt_dialogs: int = 24,
             gatt_turns: int = 5, max_new_tokens: int = 24, **kw) -> dict:
    """Held-out proving-ground report of a chat model (greedy answers). See camelid.tasks.eval."""
    from camelid.tasks.eval import evaluate as _evaluate

    return _evaluate(model, tokenizer, split=split, n=n, seed=seed, gatt_dialogs=gatt_dialogs, gatt_turns=gatt_turns,
                     max_new_tokens=max_new_tokens, **kw)


__all__ = ["TASKS", "Example", "Task", "make_dialogs", "judge_helpful", "judge_safety", "is_refusal", "evaluate",
           "INSTRUCTIONS", "Instruction", "InstructionDialog", "make_instruction_dialogs", "judge_adherence",
           "REFUSAL", "SYSTEM_PROMPTS", "WORDS", "BIBLE_BOOKS", "clean", "first_int", "is_test_item"]
