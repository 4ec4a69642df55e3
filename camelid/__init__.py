"""camelid: the LLaMA-1 / Llama-2 training system, end to end, in PyTorch.

The names below load on first use, so `import camelid` (and `camelid --help`) does not pull in torch.
"""

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ModelArgs": "camelid.model",
    "Transformer": "camelid.model",
    "preset": "camelid.model",
    "load_model": "camelid.checkpoint",
    "save_model": "camelid.checkpoint",
    "Tokenizer": "camelid.tokenizer",
    "generate": "camelid.infer.engine",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'camelid' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
