"""llama.cpp as a contestant in bench/decode.py: the same weights, converted the way a user would.

The model goes out through camelid's Hugging Face export (`save_model(..., format="hf")`, what
`camelid convert --to hf` writes) and then through llama.cpp's own `convert_hf_to_gguf.py`, the script
of the llama.cpp that the installed `llama-cpp-python` was built from. That script is not installed
with the package: it is taken from the package's source archive on PyPI (`pip download --no-binary`),
once, into a cache folder (or from LLAMA_CPP_CONVERT=path/to/convert_hf_to_gguf.py).

GGUF needs a tokenizer; a random model has none, so a small SentencePiece model is trained on the
embedded corpus (the converter pads its vocabulary to the model's). The prompts are token ids, so the
tokenizer never takes part in the timed part.

    pip install 'camelid[bench]'     # llama-cpp-python, gguf (llama-cpp-python compiles llama.cpp: minutes)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("CAMELID_BENCH_CACHE", Path.home() / ".cache" / "camelid" / "bench"))
MATCHING = {"fp32": ("f32",), "bf16": ("f16", "bf16")}  # camelid dtype -> GGUF precisions of equal size


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    import llama_cpp
    return llama_cpp.__version__


def converter() -> Path:
    """convert_hf_to_gguf.py of the installed llama-cpp-python's llama.cpp (with the packages it imports
beside it: conversion/ and gguf-py/)."""
    if os.environ.get("LLAMA_CPP_CONVERT"):
        return Path(os.environ["LLAMA_CPP_CONVERT"])
    root = CACHE / f"llama-cpp-python-{version()}"
    script = root / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", tmp, f"llama-cpp-python=={version()}"], check=True)
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as tar:
            prefix = tar.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
            keep = (prefix + "convert_hf_to_gguf.py", prefix + "gguf-py/", prefix + "conversion/")
            wanted = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(keep)]
            for m in wanted:
                m.name = m.name[len(prefix):]
            tar.extractall(root.with_suffix(".partial"), members=wanted, filter="data")
    root.with_suffix(".partial").rename(root)
    return script


def tokenizer_for_bench(vocab_size: int) -> Path:
    """A SentencePiece model of at most `vocab_size` pieces, trained once on the embedded corpus."""
    from camelid.data.corpus import iter_embedded
    from camelid.tokenizer import Tokenizer

    size = min(vocab_size, 2000)
    out = CACHE / f"tokenizer-{size}"
    if not (out / "tokenizer.model").is_file():
        docs = (d for _, d in zip(range(2000), iter_embedded("kjv-bible")))
        Tokenizer.train(docs, out, vocab_size=size, num_threads=2, minloglevel=2)
    return out / "tokenizer.model"


def to_gguf(model, gguf_type: str, workdir: Path) -> Path:
    """model (fp32 weights) -> a GGUF file of the given precision (f32, f16, bf16), through the HF export."""
    from camelid.checkpoint import save_model

    hf_dir = workdir / "hf"
    if not hf_dir.exists():
        save_model(model, hf_dir, format="hf", tokenizer_path=tokenizer_for_bench(model.args.vocab_size))
    out = workdir / f"model-{gguf_type}.gguf"
    if not out.exists():
        script = converter()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parent / "gguf-py"),
                                                             os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, str(script), str(hf_dir), "--outfile", str(out),
                        "--outtype", gguf_type], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out


def load(gguf: Path, threads: int, n_ctx: int):
    from llama_cpp import Llama
    return Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=512,
                 verbose=False, logits_all=False)


def greedy(llm, prompt: list[int], n: int, tick=None) -> list[int]:
    """n greedy tokens after prompt (no stop token), calling tick() as each arrives."""
    llm.reset()
    out = []
    for tok in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(tok)
        if tick is not None:
            tick()
        if len(out) == n:
            break
    return out
