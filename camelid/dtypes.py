"""Precision names as configs and command lines spell them -> torch dtypes (one table for every command).

NAMES needs no torch, so a command line offers the choices without loading it; DTYPES (name -> torch
dtype) loads torch on first use."""

NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
         "fp16": "float16", "float16": "float16"}


def __getattr__(name: str):
    if name == "DTYPES":
        import torch

        globals()["DTYPES"] = {k: getattr(torch, v) for k, v in NAMES.items()}
        return globals()["DTYPES"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
