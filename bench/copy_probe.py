"""Does a model copy from its context yet? (The induction-head test of Olsson et al., 2022.)

    python bench/copy_probe.py runs/quickstart/pretrain/model runs/long/pretrain/model

A batch of random token sequences, each shown twice after BOS: a model that copies predicts the second
showing almost perfectly (top-1 near 1.0) although the first is unpredictable (near 0). The proving
ground's `repeat`, `uppercase` and `reverse` questions and the helpfulness RM's checks of them need
this ability for words never seen in training (docs/RLHF.md). `--control` also trains a fresh 2-layer
model of the same code on nothing but such sequences (of varying length, so that "copy from n back"
is no answer), to show that the architecture learns it: its loss drops suddenly near step 900, the
phase change of that paper. About a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from camelid.model import ModelArgs, Transformer


def repeated_sequences(vocab_size: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(100, vocab_size, (batch, length), generator=g)  # skip the special/byte pieces
    return torch.cat([torch.ones(batch, 1, dtype=torch.long), seq, seq], 1)


@torch.no_grad()
def copy_accuracy(model: Transformer, batch: int = 16, length: int = 40) -> tuple[float, float]:
    """Top-1 accuracy on the first showing and on the repeat."""
    x = repeated_sequences(model.args.vocab_size, batch, length)
    pred = model.eval()(x[:, :-1]).argmax(-1)
    right = pred == x[:, 1:]
    return right[:, :length].float().mean().item(), right[:, length:].float().mean().item()


def control(steps: int = 1200) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=356, ffn_hidden_dim=256,
                                  max_seq_len=128))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lengths = torch.randint(10, 60, (steps,), generator=torch.Generator().manual_seed(0)).tolist()
    for step, n in enumerate(lengths):  # lengths vary, so that "copy from n back" is no solution
        x = repeated_sequences(model.args.vocab_size, 32, n, seed=step + 1)
        loss = F.cross_entropy(model(x[:, :-1])[:, n:].flatten(0, 1), x[:, n + 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="checkpoints (camelid, Hugging Face or Meta format)")
    p.add_argument("--control", action="store_true", help="also train and probe the copy-only control model")
    a = p.parse_args()
    from camelid.checkpoint import load_model

    for path in a.models:
        first, repeat = copy_accuracy(load_model(path))
        print(f"{path}: top-1 on the first showing {first:.2f}, on the repeat {repeat:.2f}")
    if a.control:
        first, repeat = copy_accuracy(control())
        print(f"control (2 layers, 1,200 steps on repeated sequences only): first {first:.2f}, repeat {repeat:.2f}")


if __name__ == "__main__":
    main()
