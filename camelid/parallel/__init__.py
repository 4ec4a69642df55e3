"""Parallelism and memory techniques applied from outside the model, torchtitan style."""

from camelid.parallel.ac import apply_ac
from camelid.parallel.compile import apply_compile

__all__ = ["apply_ac", "apply_compile"]
