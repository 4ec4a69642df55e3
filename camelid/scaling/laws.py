"""The published scaling laws and the compute-optimal model size and token count they imply.

Training compute is C = 6·N·D FLOPs (N parameters, D tokens; Kaplan et al. 2020, Chinchilla §3).

Chinchilla (Hoffmann et al. 2022, arXiv 2203.15556) estimates the compute-optimal N and D three ways:

- Approach 1 (minimum over training curves) and approach 2 (IsoFLOP profiles) publish only the
  exponents of N_opt ∝ C^a, D_opt ∝ C^b (Table 2: a = 0.50 / 0.49, b = 0.50 / 0.51). We anchor them
  at Chinchilla itself, 70B parameters on 1.4T tokens, which reproduces Table 3 within a few percent.
- Approach 3 fits the parametric loss L(N, D) = E + A/N^alpha + B/D^beta (eq. 10):
  E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28 as printed in the paper. Besiroglu et al. 2024
  ("Chinchilla Scaling: A replication attempt", arXiv 2404.10102) refit it on data extracted from the
  paper's figures and found the published fit biased (the optimiser stopped early; the printed values
  are rounded): E 1.8172, A 482.01, B 2085.43, alpha 0.3478, beta 0.3658. The refit agrees with
  approaches 1-2 (about 20 tokens per parameter); the published fit implies 35-110 tokens per parameter
  at Table 3's budgets. We offer both and name them.

For a parametric law, minimising L subject to 6ND = C gives (Chinchilla eq. 4)
    N_opt = G·(C/6)^a,  D_opt = (C/6)^b / G,  G = (alpha·A / (beta·B))^(1/(alpha+beta)),
    a = beta/(alpha+beta),  b = alpha/(alpha+beta).
The losses are nats per token of MassiveText under Chinchilla's tokenizer: they rank choices, they do
not predict the loss of a model trained on other data.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from camelid.errors import CamelidError

FLOPS_PER_PARAM_TOKEN = 6  # forward 2·N + backward 4·N per token (attention FLOPs ignored, as in Chinchilla's C = 6ND)
INFERENCE_FLOPS_PER_PARAM_TOKEN = 2  # forward pass only

CHINCHILLA_N = 70e9
CHINCHILLA_D = 1.4e12


def training_flops(n_params: float, n_tokens: float) -> float:
    return FLOPS_PER_PARAM_TOKEN * n_params * n_tokens


# --------------------------------------------------------------------------------------------------
# numbers with suffixes: "70B", "1.4T", "4M", "5.88e23", "1,000,000"

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}


def parse_count(text: str | float | int, what: str = "value") -> float:
    """Parse "70B", "1.4T", "4M", "2e12", "1_000" or "1,000" into a float (decimal suffixes)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip().replace(",", "").replace("_", "")
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtTpP]?)", s)
        if not m:
            raise CamelidError(f"cannot read {what} {text!r}: use a number such as 7e9, 7B, 1.4T or 4M")
        value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not math.isfinite(value) or value < 0:
        raise CamelidError(f"{what} must be a non-negative number, got {text!r}")
    return value


def fmt_count(x: float, digits: int = 3) -> str:
    """1.4e12 -> '1.40T', 6.7e9 -> '6.70B', 512 -> '512'."""
    if x is None or not math.isfinite(x):
        return str(x)
    for div, suf in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.{digits}g}{suf}"
    return f"{x:.{digits}g}"


def fmt_flops(x: float) -> str:
    return f"{x:.3g}"


def print_json(obj) -> None:
    """Print a command's result as JSON (paths as strings, numpy and torch scalars as numbers)."""
    def default(o):
        if isinstance(o, Path):
            return str(o)
        if hasattr(o, "item"):
            return o.item()
        raise TypeError(type(o))
    print(json.dumps(obj, indent=2, default=default))


# --------------------------------------------------------------------------------------------------
# Approach 3: the parametric law


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta."""

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    label: str = ""
    source: str = ""

    def loss(self, n_params, n_tokens):
        return self.E + self.A / n_params ** self.alpha + self.B / n_tokens ** self.beta

    @property
    def a(self) -> float:
        """Exponent of N_opt ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def optimal_for_flops(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L subject to 6ND = flops."""
        c6 = flops / FLOPS_PER_PARAM_TOKEN
        return self.G * c6 ** self.a, c6 ** self.b / self.G

    def flops_for_params(self, n_params: float) -> float:
        """The budget whose compute-optimal model has n_params parameters."""
        return FLOPS_PER_PARAM_TOKEN * (n_params / self.G) ** (1.0 / self.a)

    def flops_for_tokens(self, n_tokens: float) -> float:
        return FLOPS_PER_PARAM_TOKEN * (n_tokens * self.G) ** (1.0 / self.b)

    def tokens_for_loss(self, n_params: float, target: float) -> float:
        """Tokens a model of n_params needs to reach `target` loss (inf if it never does)."""
        rest = target - self.E - self.A / n_params ** self.alpha
        return (self.B / rest) ** (1.0 / self.beta) if rest > 0 else math.inf

    def optimal_for_loss(self, target: float) -> tuple[float, float]:
        """The compute-optimal (N, D) that reaches `target` loss: the cheapest 6ND on the iso-loss curve.

        The Lagrange condition of min 6ND s.t. L(N, D) = target is alpha·A/N^alpha = beta·B/D^beta, so
        the reducible loss splits as A/N^alpha = (target-E)·beta/(alpha+beta) and
        B/D^beta = (target-E)·alpha/(alpha+beta). The same (N, D) lies on the compute-optimal frontier.
        """
        excess = target - self.E
        if excess <= 0:
            raise CamelidError(f"target loss {target} is not above the law's irreducible loss E = {self.E}")
        n = (self.A / (excess * self.beta / (self.alpha + self.beta))) ** (1.0 / self.alpha)
        d = (self.B / (excess * self.alpha / (self.alpha + self.beta))) ** (1.0 / self.beta)
        return n, d

    def params(self) -> dict:
        return {k: getattr(self, k) for k in ("E", "A", "B", "alpha", "beta")}

    def describe(self) -> str:
        return (f"E={self.E:.4g} A={self.A:.5g} B={self.B:.6g} alpha={self.alpha:.4g} beta={self.beta:.4g}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(a=self.a, b=self.b, G=self.G)
        return d


CHINCHILLA = ParametricLaw(
    "chinchilla", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
    label="approach 3, as published (Hoffmann et al. 2022, eq. 10)",
    source="Hoffmann et al. 2022, arXiv 2203.15556, §3.3 / eq. 10 (values as printed in the paper body)",
)
BESIROGLU = ParametricLaw(
    "besiroglu", E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
    label="approach 3, refit (Besiroglu et al. 2024)",
    source="Besiroglu, Erdil, Barnett, You 2024, 'Chinchilla Scaling: A replication attempt', arXiv 2404.10102",
)
LAWS: dict[str, ParametricLaw] = {"chinchilla": CHINCHILLA, "besiroglu": BESIROGLU}


def get_law(name: str) -> ParametricLaw:
    if name not in LAWS:
        raise CamelidError(f"unknown law {name!r}; choose one of {', '.join(LAWS)}")
    return LAWS[name]


# --------------------------------------------------------------------------------------------------
# Approaches 1 and 2: published exponents, anchored at Chinchilla (70B params, 1.4T tokens)


@dataclass(frozen=True)
class PowerLawApproach:
    """N_opt = N0·(C/C0)^a, D_opt = C/(6·N_opt), with C0 = 6·N0·D0."""

    name: str
    a: float
    label: str
    N0: float = CHINCHILLA_N
    D0: float = CHINCHILLA_D

    @property
    def C0(self) -> float:
        return training_flops(self.N0, self.D0)

    def optimal_for_flops(self, flops: float) -> tuple[float, float]:
        n = self.N0 * (flops / self.C0) ** self.a
        return n, flops / (FLOPS_PER_PARAM_TOKEN * n)

    def flops_for_params(self, n_params: float) -> float:
        return self.C0 * (n_params / self.N0) ** (1.0 / self.a)

    def flops_for_tokens(self, n_tokens: float) -> float:
        # D_opt = D0·(C/C0)^(1-a)
        return self.C0 * (n_tokens / self.D0) ** (1.0 / (1.0 - self.a))

    def to_dict(self) -> dict:
        return {"name": self.name, "a": self.a, "b": 1 - self.a, "N0": self.N0, "D0": self.D0, "label": self.label}


APPROACH_1 = PowerLawApproach("approach1", 0.50, "approach 1 (training-curve envelope, a=0.50), anchored at 70B/1.4T")
APPROACH_2 = PowerLawApproach("approach2", 0.49, "approach 2 (IsoFLOP profiles, a=0.49), anchored at 70B/1.4T")

METHODS = {"approach1": APPROACH_1, "approach2": APPROACH_2, "chinchilla": CHINCHILLA, "besiroglu": BESIROGLU}

# Chinchilla Table 3 (approach 1): parameters -> (FLOPs, tokens).
CHINCHILLA_TABLE3: list[tuple[float, float, float]] = [
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
]


def compute_optimal(*, flops: float | None = None, params: float | None = None, tokens: float | None = None,
                    methods=None) -> dict:
    """Compute-optimal allocations under every method, given exactly one of flops, params, tokens.

    Returns {"given": {...}, "rows": [{method, label, params, tokens, flops, tokens_per_param,
    loss_chinchilla, loss_besiroglu}, ...]}.
    """
    given = {k: v for k, v in (("flops", flops), ("params", params), ("tokens", tokens)) if v is not None}
    if len(given) != 1:
        raise CamelidError("give exactly one of --flops, --params, --tokens")
    (kind, value), = given.items()
    if value <= 0:
        raise CamelidError(f"--{kind} must be positive")
    rows = []
    for m in (methods or METHODS.values()):
        if kind == "flops":
            c = value
        elif kind == "params":
            c = m.flops_for_params(value)
        else:
            c = m.flops_for_tokens(value)
        n, d = m.optimal_for_flops(c)
        rows.append({
            "method": m.name, "label": m.label, "params": n, "tokens": d, "flops": c,
            "tokens_per_param": d / n,
            "loss_chinchilla": CHINCHILLA.loss(n, d), "loss_besiroglu": BESIROGLU.loss(n, d),
        })
    return {"given": {kind: value}, "rows": rows}
