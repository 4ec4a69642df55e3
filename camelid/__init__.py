"""camelid: the LLaMA-1 / Llama-2 training system, end to end, in PyTorch.

The names below load on first use, so `import camelid` (and `camelid --help`) does not pull in torch.
"""

__version__ = "0.1.0"

from camelid.lazy import lazy_exports  # noqa: E402

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
__getattr__ = lazy_exports(__name__, _EXPORTS)
