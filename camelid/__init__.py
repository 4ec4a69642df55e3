"""camelid: the LLaMA-1 / Llama-2 training system, end to end, in PyTorch."""

from camelid.model import ModelArgs, Transformer, preset
from camelid.checkpoint import load_model, save_model
from camelid.tokenizer import Tokenizer
from camelid.infer.engine import generate

__version__ = "0.1.0"

__all__ = ["ModelArgs", "Transformer", "preset", "load_model", "save_model", "Tokenizer", "generate"]
