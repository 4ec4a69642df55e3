"""SFT data: the answer-only loss mask (exact tensors), packing keeps every token and mask, EOS is
learnt, packed dialogs do not see each other, JSONL loading with errors naming file and line."""

import json
import random

import pytest
import torch

from camelid.chat_format import encode_dialog_with_mask
from camelid.data.chat import IGNORE, ChatDataError, PackedChatData, encode_samples, load_chat_jsonl, pack
from camelid.train.objectives import LanguageModeling


@pytest.fixture(scope="module")
def smoke_tokenizer(smoke_run):
    from camelid.tokenizer import Tokenizer
    return Tokenizer(smoke_run[0] / "tokenizer" / "tokenizer.model")


class WordTok:
    """A whitespace tokenizer with ids given in order of first sight: exact tensors can be written by hand."""
    bos_id, eos_id = 1, 2

    def __init__(self):
        self.vocab = {}

    def encode(self, text, bos=False, eos=False):
        ids = [self.vocab.setdefault(w, 3 + len(self.vocab)) for w in text.split()]
        return ([1] if bos else []) + ids + ([2] if eos else [])


def test_mask_single_turn_exact():
    tok = WordTok()
    ids, mask = encode_dialog_with_mask(tok, [{"role": "user", "content": "add 2 3"},
                                              {"role": "assistant", "content": "5"}])
    v = tok.vocab
    assert ids == [1, v["[INST]"], v["add"], v["2"], v["3"], v["[/INST]"], v["5"], 2]
    assert mask == [0, 0, 0, 0, 0, 0, 1, 1]


def test_mask_multi_turn_with_system_exact():
    tok = WordTok()
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
            {"role": "user", "content": "bye"}, {"role": "assistant", "content": "farewell"}]
    ids, mask = encode_dialog_with_mask(tok, msgs)
    v = tok.vocab
    turn1 = [1, v["[INST]"], v["<<SYS>>"], v["be"], v["brief"], v["<</SYS>>"], v["hi"], v["[/INST]"],
             v["hello"], v["there"], 2]
    turn2 = [1, v["[INST]"], v["bye"], v["[/INST]"], v["farewell"], 2]
    assert ids == turn1 + turn2
    assert mask == [0] * 8 + [1, 1, 1] + [0] * 4 + [1, 1]


def test_mask_multi_turn_without_system_exact():
    tok = WordTok()
    msgs = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"},
            {"role": "user", "content": "d"}, {"role": "assistant", "content": "e f g"},
            {"role": "user", "content": "h"}, {"role": "assistant", "content": "i"}]
    ids, mask = encode_dialog_with_mask(tok, msgs)
    assert mask == [0, 0, 0, 0, 0, 1, 1] + [0, 0, 0, 0, 1, 1, 1, 1] + [0, 0, 0, 0, 1, 1]
    assert [i for i, m in zip(ids, mask) if m] == [tok.vocab[w] for w in "c"] + [2] + \
        [tok.vocab[w] for w in "efg"] + [2] + [tok.vocab["i"], 2]


def test_mask_real_tokenizer_is_answers_and_eos(smoke_tokenizer):
    tok = smoke_tokenizer
    answers = ["Paris, of course.", "It is 42.", "Goodbye!"]
    for system in (None, "You are terse."):
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": answers[0]},
            {"role": "user", "content": "And the answer?"}, {"role": "assistant", "content": answers[1]},
            {"role": "user", "content": "Bye."}, {"role": "assistant", "content": answers[2]}]
        ids, mask = encode_dialog_with_mask(tok, msgs)
        # The masked spans, one per answer, are exactly the answer's tokens (+ Meta's trailing space) and EOS.
        spans, cur = [], []
        for i, m in zip(ids, mask):
            if m:
                cur.append(i)
            elif cur:
                spans.append(cur)
                cur = []
        spans.append(cur) if cur else None
        assert len(spans) == 3
        for span, a in zip(spans, answers):
            assert span[-1] == tok.eos_id
            assert tok.decode(span[:-1]).strip() == a
        assert sum(1 for i, m in zip(ids, mask) if i == tok.eos_id and m) == 3


def _samples(n, seed=0, vocab=50):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        L = rng.randint(3, 40)
        ids = [1] + [rng.randint(3, vocab) for _ in range(L - 2)] + [2]
        k = rng.randint(1, L - 2)
        mask = [0] * k + [1] * (L - k)
        out.append((ids, mask))
    return out


def test_pack_exact_two_samples():
    a = ([1, 5, 6, 7, 2], [0, 0, 0, 1, 1])
    b = ([1, 8, 9, 2], [0, 0, 1, 1])
    rows = pack([a, b], seq_len=8, shuffle=False, pad_id=0)
    assert rows.input.tolist() == [[1, 5, 6, 7, 1, 8, 9, 0]]
    assert rows.labels.tolist() == [[IGNORE, IGNORE, 7, 2, IGNORE, 9, 2, IGNORE]]
    assert rows.positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    assert rows.segment_ids.tolist() == [[1, 1, 1, 1, 2, 2, 2, 0]]
    assert rows.members == [[0, 1]]


@pytest.mark.parametrize("seq_len", [40, 64, 128])
def test_pack_keeps_every_token_and_mask(seq_len):
    samples = _samples(300, seed=seq_len)
    rows = pack(samples, seq_len, seed=3)
    seen = []
    for r in range(len(rows)):
        for s, idx in enumerate(rows.members[r], 1):
            sel = rows.segment_ids[r] == s
            inp, lab, pos = rows.input[r][sel].tolist(), rows.labels[r][sel].tolist(), rows.positions[r][sel].tolist()
            ids, mask = samples[idx]
            assert inp == ids[:-1]
            assert lab == [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]
            assert pos == list(range(len(ids) - 1))
            seen.append(idx)
        pad = rows.segment_ids[r] == 0
        assert (rows.labels[r][pad] == IGNORE).all()
    assert sorted(seen) == list(range(len(samples)))  # every sample exactly once
    assert rows.stats["target_tokens"] == sum(sum(m[1:]) for _, m in samples)
    assert rows.stats["fill"] > 0.8


def test_pack_truncates_and_counts():
    rows = pack([([1] + [5] * 20 + [2], [0] + [1] * 21)], seq_len=10)
    assert rows.stats["truncated"] == 1 and rows.input.shape == (1, 10)


def test_eos_is_learnt_not_masked_as_padding(smoke_tokenizer):
    """The pad = EOS bug: padding must be ignored by position, never by token id, so EOS stays a target."""
    tok = smoke_tokenizer
    dialogs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(20)]
    rows = pack(encode_samples(tok, dialogs), 64, pad_id=tok.eos_id)
    assert int((rows.labels == tok.eos_id).sum()) == 20
    assert (rows.input[rows.segment_ids == 0] == tok.eos_id).all()  # padding is EOS here, and still ignored


def test_packed_loss_equals_separate_losses():
    from camelid.model import ModelArgs, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, ffn_hidden_dim=64,
                                  max_seq_len=128)).eval()
    samples = _samples(6, seed=1, vocab=63)
    rows = pack(samples, 64, seed=0)
    obj = LanguageModeling()
    packed = sum(obj(model, rows.batch(torch.tensor([r])))[0].item() for r in range(len(rows)))
    alone = 0.0
    for ids, mask in samples:
        one = pack([(ids, mask)], len(ids) - 1)
        alone += obj(model, one.batch(torch.tensor([0])))[0].item()
    assert packed == pytest.approx(alone, rel=1e-5)
    # cross_attention=True: dialogs see each other, so the loss changes
    crossed = sum(obj(model, rows.batch(torch.tensor([r]), cross_attention=True))[0].item() for r in range(len(rows)))
    assert crossed != pytest.approx(alone, rel=1e-5)


def test_dataset_epochs_are_permutations():
    rows = pack(_samples(100), 64, seed=0)
    data = PackedChatData(rows, seed=5)
    n = len(data)
    first, second = data.row_indices(list(range(n))), data.row_indices(list(range(n, 2 * n)))
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
    assert data.state_dict() == PackedChatData(pack(_samples(100), 64, seed=0), seed=5).state_dict()
    b = data.fetch([0, 1, 2])
    assert set(b) == {"input", "labels", "positions", "segment_ids"} and b["input"].shape == (3, 64)


def test_jsonl_formats_and_errors(tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text("\n".join([
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                 {"role": "assistant", "content": "a"}]}),
        json.dumps({"prompt": "p", "response": "r"}),
        "",
        json.dumps({"prompt": "p2", "completion": "c2", "system": "sys"}),
    ]) + "\n")
    dialogs = load_chat_jsonl(f)
    assert len(dialogs) == 3
    assert dialogs[1] == [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    assert dialogs[2][0] == {"role": "system", "content": "sys"}
    for bad, why in [("{not json", "not valid JSON"), (json.dumps({"text": "x"}), "expected a 'messages'"),
                     (json.dumps({"prompt": "x"}), "needs an answer field"),
                     (json.dumps({"messages": [{"role": "user", "content": "u"}]}), "must end with an assistant"),
                     (json.dumps({"messages": [{"role": "bot", "content": "u"}]}), "unknown role"),
                     (json.dumps({"prompt": "[INST] x", "response": "y"}), "special tags")]:
        g = tmp_path / "bad.jsonl"
        g.write_text(json.dumps({"prompt": "ok", "response": "ok"}) + "\n" + bad + "\n")
        with pytest.raises(ChatDataError, match=rf"bad.jsonl:2: .*{why}"):
            load_chat_jsonl(g)
    with pytest.raises(ChatDataError, match="no such file"):
        load_chat_jsonl(tmp_path / "missing.jsonl")
