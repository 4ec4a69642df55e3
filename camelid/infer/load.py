"""Loading a model and its tokenizer for inference (the `generate`, `chat` and `serve` commands)."""

from __future__ import annotations

from pathlib import Path

import torch

from camelid.dtypes import DTYPES
from camelid.errors import CamelidError


def load_model_and_tokenizer(model_path, tokenizer_path=None, device="cpu", dtype=None, threads=None):
    """(model, tokenizer); the tokenizer defaults to tokenizer.model beside the weights."""
    if threads is not None:
        if threads < 1:
            raise CamelidError("--threads must be at least 1")
        torch.set_num_threads(threads)
    from camelid.checkpoint import check_vocab, load_model
    from camelid.tokenizer import Tokenizer

    path = Path(model_path)
    if not path.exists():
        raise CamelidError(f"{path}: no such checkpoint directory")
    tok_path = Path(tokenizer_path) if tokenizer_path else path / "tokenizer.model"
    if not tok_path.exists():
        raise CamelidError(f"{tok_path}: no tokenizer found; pass --tokenizer PATH/tokenizer.model")
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    try:
        model = load_model(path, device=device, dtype=dtype)
    except CamelidError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise CamelidError(f"{path}: cannot load the model ({e})") from None
    if getattr(model, "kind", "lm") != "lm":
        raise CamelidError(f"{path}: a {model.kind} model scores answers and does not generate text; "
                           f"give a language model (pre-trained, SFT, RS or PPO checkpoint)")
    tokenizer = Tokenizer(tok_path)
    check_vocab(tokenizer, model, path)
    return model, tokenizer
