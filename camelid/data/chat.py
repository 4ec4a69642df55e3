"""Chat data for supervised fine-tuning (Llama-2 §3.1): loading, the answer-only loss mask, packing.

Files are JSONL, one dialog per line, in either form:

    {"messages": [{"role": "system", "content": ...}, {"role": "user", ...}, {"role": "assistant", ...}, ...]}
    {"prompt": "...", "response": "..."}          ("completion" / "answer" / "output" also name the answer;
                                                   an optional "system" adds a system prompt)

Each dialog is encoded in the Llama-2 chat format (`camelid.chat_format`) with a loss mask that is 1
exactly on the assistant answers and their EOS. EOS is found by the mask, never by token id, so the
"pad = EOS, so EOS is masked out and the model never learns to stop" bug cannot happen here.

Packing: every dialog becomes one piece (inputs ids[:-1], next-token labels ids[1:] with IGNORE where
the mask is 0); pieces are packed first-fit into rows of `seq_len` tokens. Inside a row each piece
keeps its own positions (0, 1, ...) and segment id, so a token attends only to its own dialog
(`cross_attention=True` lets packed dialogs see each other, with consecutive positions, as plain
concatenation does). Unused row tails are padding with IGNORE labels. A dialog longer than a row is
truncated (counted in the stats; its tail is lost).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from camelid.chat_format import ChatFormatError, encode_dialog_with_mask, normalize_dialog
from camelid.errors import CamelidError
from camelid.fsutil import iter_jsonl

IGNORE = -100
ANSWER_KEYS = ("response", "completion", "answer", "output", "chosen")


class ChatDataError(CamelidError, ValueError):
    pass


def parse_record(rec, where: str) -> list[dict]:
    """One JSONL record -> a list of {"role", "content"} messages (a checked dialog)."""
    if not isinstance(rec, dict):
        raise ChatDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise ChatDataError(f"{where}: 'messages' must be a list of {{\"role\", \"content\"}} objects")
        msgs = [{"role": m.get("role"), "content": m.get("content")} for m in msgs]
    elif "prompt" in rec:
        key = next((k for k in ANSWER_KEYS if k in rec), None)
        if key is None:
            raise ChatDataError(f"{where}: a 'prompt' record needs an answer field ({', '.join(ANSWER_KEYS)})")
        msgs = ([{"role": "system", "content": rec["system"]}] if rec.get("system") else []) + \
            [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec[key]}]
    else:
        raise ChatDataError(f"{where}: expected a 'messages' list or 'prompt' and 'response' fields; "
                            f"found keys {sorted(rec)}")
    try:
        norm = normalize_dialog(msgs)
    except ChatFormatError as e:
        raise ChatDataError(f"{where}: {e}") from None
    if len(norm) < 2 or norm[-1]["role"] != "assistant":
        raise ChatDataError(f"{where}: the dialog must end with an assistant answer to train on")
    return msgs


def load_chat_jsonl(path: str | Path) -> list[list[dict]]:
    """Dialogs of a JSONL file; a bad line is reported as FILE:LINE with what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ChatDataError(f"{path}: no such file")
    out = [parse_record(rec, where) for where, rec in iter_jsonl(path, ChatDataError)]
    if not out:
        raise ChatDataError(f"{path}: no dialogs")
    return out


def encode_samples(tokenizer, dialogs, last_turn_only: bool = False) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) per dialog: the Llama-2 chat format, mask 1 on assistant answers and their EOS."""
    return [encode_dialog_with_mask(tokenizer, d, last_turn_only=last_turn_only) for d in dialogs]


@dataclass
class PackedRows:
    input: torch.Tensor  # [N, T] token ids (padding: pad_id)
    labels: torch.Tensor  # [N, T] next-token targets, IGNORE off the answers and on padding
    positions: torch.Tensor  # [N, T] rotary positions, restarting at 0 for every packed dialog
    segment_ids: torch.Tensor  # [N, T] 1, 2, ... per dialog in the row; 0 on padding
    stats: dict
    members: list[list[int]] | None = None  # per row, the sample index of each segment (segment s: members[r][s-1])

    def __len__(self) -> int:
        return self.input.shape[0]

    def batch(self, idx, cross_attention: bool = False) -> dict:
        out = {"input": self.input[idx], "labels": self.labels[idx]}
        if cross_attention:
            T = self.input.shape[1]
            out["positions"] = torch.arange(T).expand(len(out["input"]), T).contiguous()
        else:
            out["positions"] = self.positions[idx]
            out["segment_ids"] = self.segment_ids[idx]
        return out

    def digest(self) -> str:
        h = hashlib.sha256()
        for t in (self.input, self.labels, self.positions, self.segment_ids):
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]


def pack(samples, seq_len: int, seed: int = 0, pad_id: int = 0, shuffle: bool = True) -> PackedRows:
    """First-fit packing of (ids, mask) samples into rows of seq_len inputs (see the module doc)."""
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    order = list(range(len(samples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    pieces, truncated, skipped = [], 0, 0
    for i in order:
        ids, mask = samples[i]
        if len(ids) != len(mask):
            raise ValueError(f"sample {i}: {len(ids)} ids but {len(mask)} mask values")
        if len(ids) < 2 or not any(mask[1:]):
            skipped += 1  # nothing to learn from
            continue
        if len(ids) - 1 > seq_len:
            truncated += 1
            ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
        pieces.append((i, ids, mask))
    rows: list[list] = []  # each: list of pieces
    room: list[int] = []
    for piece in pieces:
        n = len(piece[1]) - 1
        for r, left in enumerate(room):
            if left >= n:
                rows[r].append(piece)
                room[r] -= n
                break
        else:
            rows.append([piece])
            room.append(seq_len - n)
    N = len(rows)
    inp = torch.full((N, seq_len), pad_id, dtype=torch.long)
    lab = torch.full((N, seq_len), IGNORE, dtype=torch.long)
    pos = torch.zeros((N, seq_len), dtype=torch.long)
    seg = torch.zeros((N, seq_len), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, (_, ids, mask) in enumerate(row, 1):
            n = len(ids) - 1
            ids_t, mask_t = torch.tensor(ids), torch.tensor(mask, dtype=torch.bool)
            inp[r, at:at + n] = ids_t[:-1]
            lab[r, at:at + n] = torch.where(mask_t[1:], ids_t[1:], torch.full_like(ids_t[1:], IGNORE))
            pos[r, at:at + n] = torch.arange(n)
            seg[r, at:at + n] = s
            at += n
    used = sum(seq_len - x for x in room)
    stats = {"samples": len(samples), "packed": len(pieces), "rows": N, "seq_len": seq_len,
             "truncated": truncated, "skipped": skipped, "fill": used / max(N * seq_len, 1),
             "target_tokens": int((lab != IGNORE).sum())}
    return PackedRows(inp, lab, pos, seg, stats, [[p[0] for p in row] for row in rows])


class PackedChatData:
    """Packed rows as a training-loop Dataset: global sample g is row perm_e[g % N] of epoch e = g // N."""

    def __init__(self, rows: PackedRows, seed: int = 0, cross_attention: bool = False, name: str = ""):
        if len(rows) == 0:
            raise ChatDataError(f"{name or 'chat data'}: no dialog left to train on")
        self.rows, self.seed, self.cross_attention, self.name = rows, seed, cross_attention, name
        self._perms: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(len(self.rows), generator=g)
        return self._perms[epoch]

    def row_indices(self, indices: list[int]) -> list[int]:
        n = len(self.rows)
        return [int(self._perm(g // n)[g % n]) for g in indices]

    def fetch(self, indices: list[int]) -> dict:
        return self.rows.batch(torch.tensor(self.row_indices(indices)), cross_attention=self.cross_attention)

    def state_dict(self) -> dict:
        return {"kind": "chat", "name": self.name, "rows": len(self.rows), "seq_len": self.rows.input.shape[1],
                "seed": self.seed, "cross_attention": self.cross_attention, "digest": self.rows.digest()}


__all__ = ["load_chat_jsonl", "parse_record", "encode_samples", "pack", "PackedRows", "PackedChatData",
           "ChatDataError", "IGNORE"]
