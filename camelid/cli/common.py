"""Flags that several commands share: the model to load (generate, chat, serve) and sampling (generate, chat)."""

from __future__ import annotations

import sys

from camelid.dtypes import NAMES as DTYPE_NAMES


def add_model_arguments(p) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory (camelid, Hugging Face or Meta format)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.model (default: the one in the checkpoint directory)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPE_NAMES),
                   help="inference precision (default: as stored; bf16 halves the bytes read per token)")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="context length in tokens (default: the model's max_seq_len)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is best for tiny models or a busy machine)")


def add_compile_argument(p) -> None:
    p.add_argument("--compile", action="store_true",
                   help="decode with a compiled step (torch.compile of the model's forward: about 1.4-2.6x the tokens/s "
                        "on a CPU, after 10-60 s of compiling at start; for long sessions, not one short answer)")


def warm_up(engine) -> None:
    """Compile a compiled engine's decode step now (one row), so that the first answer is not the slow one."""
    from camelid.infer.engine import Request  # here: `--help` stays free of torch
    if engine.compiled is not None:
        print("camelid: compiling the decode step (10-60 s) ...", file=sys.stderr, flush=True)
        engine.add(Request([1, 1], 2, stop_ids=()))
        engine.run()


def add_sampling_arguments(p, temperature: float, top_p: float, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=top_p, help="nucleus sampling threshold (1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens (0 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")


def model_from_flags(args):
    """(model, tokenizer) as the model flags ask for them."""
    from camelid.infer.load import load_model_and_tokenizer

    return load_model_and_tokenizer(args.model, args.tokenizer, args.device, args.dtype, args.threads)
