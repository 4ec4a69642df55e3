"""Chinchilla scaling laws, fits to your own runs, inference-aware sizing and a cluster planner.

- `laws`      the published laws (Chinchilla approaches 1-3, the 2024 refit), compute-optimal N and D
- `fit`       L(N, D) = E + A/N^alpha + B/D^beta fitted to run directories (Huber on log-loss, L-BFGS)
- `inference` the model size that minimises training plus lifetime serving compute for a target loss
- `planner`   memory per GPU, step time, days and GPU-hours of a pre-training run
- `report`    what `camelid scaling optimal` and `serve-aware` print and draw
- `sweep`     a grid of tiny pre-training runs, fitted (`camelid scaling sweep`)

The commands (`camelid scaling ...`, `camelid plan`) are camelid/cli/scaling.py.

See docs/SCALING.md for worked examples.
"""

from camelid.scaling.laws import (
    BESIROGLU,
    CHINCHILLA,
    CHINCHILLA_TABLE3,
    LAWS,
    ParametricLaw,
    PowerLawApproach,
    APPROACH_1,
    APPROACH_2,
    training_flops,
)

__all__ = [
    "BESIROGLU", "CHINCHILLA", "CHINCHILLA_TABLE3", "LAWS", "ParametricLaw", "PowerLawApproach",
    "APPROACH_1", "APPROACH_2", "training_flops",
]
