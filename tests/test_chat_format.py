"""The Llama-2 chat format: token ids equal Meta's reference construction; SFT masks; refusals."""

import os
from typing import List

import pytest

from camelid.chat_format import (ChatFormatError, encode_dialog, encode_dialog_with_mask, normalize_dialog)
from camelid.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A LLaMA-compatible 32k SentencePiece model when mistral-common ships one, else a small trained one."""
    try:
        import mistral_common
        path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
        if os.path.exists(path):
            return Tokenizer(path)
    except ImportError:
        pass
    words = "the quick brown fox jumps over lazy dog llama answer question hello world system be brief".split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(10)) for i in range(500)]
    return Tokenizer.train(lines, tmp_path_factory.mktemp("tok"), vocab_size=400)


# ---- Meta's reference, copied from llama/generation.py (Llama.chat_completion), unchanged but for the
# ---- function wrapper and the unsafe check returning instead of being recorded.
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"]


def meta_chat_prompt(tokenizer, dialog) -> List[int]:
    assert not any([tag in msg["content"] for tag in SPECIAL_TAGS for msg in dialog])
    if dialog[0]["role"] == "system":
        dialog = [
            {
                "role": dialog[1]["role"],
                "content": B_SYS
                + dialog[0]["content"]
                + E_SYS
                + dialog[1]["content"],
            }
        ] + dialog[2:]
    assert all([msg["role"] == "user" for msg in dialog[::2]]) and all(
        [msg["role"] == "assistant" for msg in dialog[1::2]]
    ), (
        "model only supports 'system', 'user' and 'assistant' roles, "
        "starting with 'system', then 'user' and alternating (u/a/u/a/u...)"
    )
    dialog_tokens: List[int] = sum(
        [
            tokenizer.encode(
                f"{B_INST} {(prompt['content']).strip()} {E_INST} {(answer['content']).strip()} ",
                bos=True,
                eos=True,
            )
            for prompt, answer in zip(
                dialog[::2],
                dialog[1::2],
            )
        ],
        [],
    )
    assert (
        dialog[-1]["role"] == "user"
    ), f"Last message must be from user, got {dialog[-1]['role']}"
    dialog_tokens += tokenizer.encode(
        f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}",
        bos=True,
        eos=False,
    )
    return dialog_tokens


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


def S(c):
    return {"role": "system", "content": c}


DIALOGS = [
    [U("what is the recipe of mayonnaise?")],
    [U("I am going to Paris, what should I see?"),
     A("Paris, the capital of France, is known for the Eiffel Tower and the Louvre."),
     U("What is so great about #1?")],
    [S("Always answer with Haiku"), U("I am going to Paris, what should I see?")],
    [S("Always answer with emojis"), U("How to go from Beijing to NY?")],
    [S("  Be brief.\n"), U("  hi there  "), A("\nhello!  "), U("2 + 2 = ?"), A("4"), U("and 3 + 3? 😀 ünïcödé")],
    [U(""), A(""), U("  ")],
]


@pytest.mark.parametrize("dialog", DIALOGS, ids=range(len(DIALOGS)))
def test_prompt_ids_equal_meta_reference(tok, dialog):
    assert encode_dialog(tok, dialog) == meta_chat_prompt(tok, dialog)


def test_prompt_starts_and_ends_like_llama2(tok):
    ids = encode_dialog(tok, [S("sys"), U("hi"), A("hello"), U("bye")])
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 2 and ids.count(tok.eos_id) == 1
    assert tok.decode(ids) == "[INST] <<SYS>>\nsys\n<</SYS>>\n\nhi [/INST] hello  [INST] bye [/INST]"  # Meta: answer + " ", then EOS, BOS, "▁[INST]"


@pytest.mark.parametrize("dialog", [d for d in DIALOGS if len(d) > 2], ids=lambda d: str(len(d)))
def test_full_dialog_ids_and_mask(tok, dialog):
    """A whole dialog (ending with an answer) equals Meta's exchanges; the mask covers exactly the answers + EOS."""
    dialog = dialog + [A("  the last answer. ")]
    ids, mask = encode_dialog_with_mask(tok, dialog)
    # ids: Meta's reference for the prompt up to the last user turn is a prefix once the open turn is closed
    conv = normalize_dialog(dialog)
    expected = sum((tok.encode(f"{B_INST} {p['content'].strip()} {E_INST} {a['content'].strip()} ", bos=True, eos=True)
                    for p, a in zip(conv[::2], conv[1::2])), [])
    assert ids == expected and len(mask) == len(ids)
    # mask spans: each is an answer (+ Meta's trailing space) followed by EOS, and nothing else is masked in
    spans, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    answers = [a["content"].strip() for a in conv[1::2]]
    assert len(spans) == len(answers)
    for span, ans in zip(spans, answers):
        assert span[-1] == tok.eos_id and tok.eos_id not in span[:-1]
        assert tok.decode(span[:-1]).strip() == ans
    # the unmasked part is exactly the prompt Meta builds for each turn
    prompt_of_last = ids[:len(ids) - len(spans[-1])]
    assert prompt_of_last == meta_chat_prompt(tok, dialog[:-1])


def test_mask_last_turn_only_and_open_tail(tok):
    d = [S("sys"), U("a"), A("b"), U("c"), A("d")]
    ids, all_mask = encode_dialog_with_mask(tok, d)
    ids2, last_mask = encode_dialog_with_mask(tok, d, last_turn_only=True)
    assert ids == ids2 and sum(last_mask) < sum(all_mask)
    first_eos = ids.index(tok.eos_id)
    assert not any(last_mask[:first_eos + 1]) and last_mask[-1] == 1
    ids3, mask3 = encode_dialog_with_mask(tok, d + [U("e")])
    assert ids3 == ids + tok.encode("[INST] e [/INST]", bos=True) and mask3 == all_mask + [0] * (len(ids3) - len(ids))


@pytest.mark.parametrize("tag", ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_special_tags_are_refused(tok, tag, where):
    d = [S("system"), U("question"), A("answer"), U("again")]
    d[where + (where > 0)] = {**d[where + (where > 0)], "content": f"x {tag} y"}
    with pytest.raises(ChatFormatError, match="special tags"):
        encode_dialog(tok, d)
    with pytest.raises(ChatFormatError):
        encode_dialog_with_mask(tok, d)


@pytest.mark.parametrize("dialog, match", [
    ([], "empty"),
    ([{"role": "tool", "content": "x"}], "unknown role"),
    ([U("a"), U("b")], "alternating"),
    ([A("a"), U("b")], "alternating"),
    ([U("a"), S("b")], "alternating"),
    ([S("a")], "followed by a user"),
    ([U("a"), A("b")], "Last message must be from user"),
    ([{"role": "user", "content": 3}], "must be a string"),
])
def test_bad_dialogs_are_refused(tok, dialog, match):
    with pytest.raises(ChatFormatError, match=match):
        encode_dialog(tok, dialog)
