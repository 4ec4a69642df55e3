"""Paired comparison of two policies on the same held-out prompts: the mean difference and its 95% interval.

The report card measures every stage on the same prompts, so a stage (a) and SFT (b) are compared
prompt by prompt, d_i = a_i - b_i, and the interval is the paired normal (Wald) interval

    mean(d) ± 1.96 * sd(d) / sqrt(n),   sd with n - 1 (the sample standard deviation).

It is the paired t-interval with the normal quantile in place of t's, which is close enough at the
hundreds of prompts the report card uses (t's quantile is 1.964 at n = 540, 1.973 at n = 180). Pairing
takes out what both policies share (how hard each prompt is), so the interval is much narrower than the
one for the difference of two independent accuracies. It covers the prompt-to-prompt noise of one
trained model; a different training seed can move the difference further (pool seeds for that).
Pure Python: no torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

Z95 = 1.96  # the normal distribution's two-sided 95% quantile


@dataclass(frozen=True)
class PairedDiff:
    diff: float  # mean of a_i - b_i
    low: float  # 95% interval
    high: float
    n: int  # pairs

    def to_dict(self) -> dict:
        return asdict(self)


def _check(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs one b per a: got {len(a)} and {len(b)} values")


def interval(d: Sequence[float]) -> PairedDiff:
    """Mean of the differences d and its paired normal 95% interval (sd with n - 1)."""
    n = len(d)
    if n < 2:
        raise ValueError(f"a paired interval needs at least 2 pairs (its sd divides by n - 1); got {n}")
    mean = math.fsum(d) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return PairedDiff(mean, mean - half, mean + half, n)


def paired_diff(a: Sequence[float], b: Sequence[float]) -> PairedDiff:
    """a - b on the same prompts (a[i] and b[i] measured on prompt i): mean and 95% interval."""
    _check(a, b)
    return interval([x - y for x, y in zip(a, b)])


def pooled_paired_diff(pairs: Iterable[tuple[Sequence[float], Sequence[float]]]) -> PairedDiff:
    """Several seeds' (a, b) pairs concatenated into one sample of n = sum of their lengths.

    Treats every pair as independent. When the seeds were measured on the same prompts they are not
    (a prompt that is hard for one seed's policy is hard for the others'), and this interval comes out
    too narrow; paired_diff_by_prompt is the one for that case."""
    d: list[float] = []
    for a, b in pairs:
        _check(a, b)
        d += [x - y for x, y in zip(a, b)]
    return interval(d)


def paired_diff_by_prompt(pairs: Iterable[tuple[Sequence[float], Sequence[float]]]) -> PairedDiff:
    """Several seeds measured on the same prompts: each prompt's difference averaged over the seeds
    first, then the paired interval over the prompts (n = prompts, the independent unit)."""
    per_seed = []
    for a, b in pairs:
        _check(a, b)
        per_seed.append([x - y for x, y in zip(a, b)])
    if not per_seed or len({len(d) for d in per_seed}) != 1:
        raise ValueError("by-prompt pooling needs every seed measured on the same prompts (equal lengths), "
                         f"got lengths {[len(d) for d in per_seed]}")
    return interval([math.fsum(col) / len(col) for col in zip(*per_seed)])


def format_diff(d: PairedDiff | dict | None, scale: float = 100.0, digits: int = 1) -> str:
    """'+2.2 [+0.4, +4.0]': the difference and its interval, times scale (100: percentage points)."""
    if d is None:
        return "–"
    d = d.to_dict() if isinstance(d, PairedDiff) else d
    f = lambda x: f"{scale * x:+.{digits}f}"  # noqa: E731
    return f"{f(d['diff'])} [{f(d['low'])}, {f(d['high'])}]"
