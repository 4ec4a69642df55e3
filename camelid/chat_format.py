"""The Llama-2 chat format, token for token as Meta's `llama/generation.py` (`chat_completion`) builds it.

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user_1} [/INST] {answer_1} </s><s>[INST] {user_2} [/INST]

* A system message may only come first; it is folded into the first user message.
* Then user and assistant alternate, starting with the user.
* Every finished exchange is one `encode(f"[INST] {user} [/INST] {answer} ", bos=True, eos=True)`
  (contents stripped; BOS and EOS are token ids, the tags plain text); the open turn is
  `encode(f"[INST] {user} [/INST]", bos=True)`.
* A message that contains [INST], [/INST], <<SYS>> or <</SYS>> is refused (Meta answers such a dialog
  with an error message instead of generating).

`encode_dialog` builds a prompt that ends in an open user turn (for generation);
`encode_dialog_with_mask` builds a whole dialog with a per-token loss mask for supervised fine-tuning:
1 exactly on the tokens of the assistant answers (including the space Meta's format leaves after each
answer) and their EOS, 0 on everything else.
"""

from __future__ import annotations

from camelid.errors import CamelidError

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"]
UNSAFE_ERROR = "Error: special tags are not allowed as part of the prompt."
ROLES = ("system", "user", "assistant")

# Meta's chat sampling defaults (generation.py: chat_completion)
CHAT_TEMPERATURE = 0.6
CHAT_TOP_P = 0.9


class ChatFormatError(CamelidError, ValueError):
    """A dialog the Llama-2 chat format cannot encode (bad roles or order, a special tag in a message)."""


def _get(msg, key):
    if isinstance(msg, dict):
        return msg.get(key)
    return getattr(msg, key, None)


def normalize_dialog(messages) -> list[dict]:
    """Check a dialog and fold the system prompt into the first user message, as Meta does.

    Returns [{"role": "user"|"assistant", "content": str}, ...] alternating, starting with the user.
    """
    dialog = []
    for i, msg in enumerate(messages):
        role, content = _get(msg, "role"), _get(msg, "content")
        if role not in ROLES:
            raise ChatFormatError(f"message {i}: unknown role {role!r}; the Llama-2 chat format knows "
                                  f"{', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ChatFormatError(f"message {i}: content must be a string, got {type(content).__name__}")
        if any(tag in content for tag in SPECIAL_TAGS):
            raise ChatFormatError(f"message {i}: {UNSAFE_ERROR} ({', '.join(SPECIAL_TAGS)})")
        dialog.append({"role": role, "content": content})
    if not dialog:
        raise ChatFormatError("the dialog is empty")
    if dialog[0]["role"] == "system":
        if len(dialog) < 2:
            raise ChatFormatError("a system message must be followed by a user message")
        dialog = [{"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] \
            + dialog[2:]
    for i, msg in enumerate(dialog):
        want = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != want:
            raise ChatFormatError("the model only supports 'system', 'user' and 'assistant' roles, starting with "
                                  "'system', then 'user' and alternating (u/a/u/a/u...)"
                                  f"; message {i} (after folding the system prompt) is {msg['role']!r}")
    return dialog


def _exchange_text(user: str, answer: str) -> str:
    return f"{B_INST} {user.strip()} {E_INST} {answer.strip()} "


def _open_text(user: str) -> str:
    return f"{B_INST} {user.strip()} {E_INST}"


def encode_dialog(tokenizer, messages) -> list[int]:
    """Token ids of a prompt ending in an open user turn, ready for the assistant's answer."""
    dialog = normalize_dialog(messages)
    if dialog[-1]["role"] != "user":
        raise ChatFormatError(f"Last message must be from user, got {dialog[-1]['role']}")
    ids: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        ids += tokenizer.encode(_exchange_text(prompt["content"], answer["content"]), bos=True, eos=True)
    ids += tokenizer.encode(_open_text(dialog[-1]["content"]), bos=True, eos=False)
    return ids


def encode_dialog_with_mask(tokenizer, messages, last_turn_only: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of a whole dialog and a loss mask (1 = train on this token) of the same length.

    The ids are Meta's (each exchange one encode call). The mask is 1 on each assistant answer's tokens
    and its EOS. If the dialog ends with a user message, that open turn is appended with mask 0.
    last_turn_only=True masks every answer but the last (Ghost Attention trains only the final turn).
    """
    dialog = normalize_dialog(messages)
    ids: list[int] = []
    mask: list[int] = []
    exchanges = list(zip(dialog[::2], dialog[1::2]))
    for n, (prompt, answer) in enumerate(exchanges):
        full = tokenizer.encode(_exchange_text(prompt["content"], answer["content"]), bos=True, eos=True)
        head = tokenizer.encode(_open_text(prompt["content"]), bos=True, eos=False)
        # SentencePiece splits at whitespace, so the answer starts where the open turn's tokens end;
        # if some tokenizer merges across that boundary, the answer starts at the first differing token.
        k = 0
        while k < min(len(head), len(full) - 1) and head[k] == full[k]:
            k += 1
        on = 0 if (last_turn_only and n != len(exchanges) - 1) else 1
        ids += full
        mask += [0] * k + [on] * (len(full) - k)
    if len(dialog) % 2 == 1:
        tail = tokenizer.encode(_open_text(dialog[-1]["content"]), bos=True, eos=False)
        ids += tail
        mask += [0] * len(tail)
    return ids, mask


def encode_reply(tokenizer, messages: list[dict], answer: str, max_len: int) -> list[int]:
    """Token ids of `messages` answered by `answer`, as a reward model reads them: its score is read at the
    end, so a dialog longer than max_len loses its oldest tokens first."""
    return encode_reply_with_mask(tokenizer, messages, answer, max_len)[0]


def encode_reply_with_mask(tokenizer, messages: list[dict], answer: str, max_len: int) -> tuple[list[int], list[int]]:
    """`encode_reply`'s ids and their loss mask (1 on the answer's tokens and its EOS), cut alike."""
    ids, mask = encode_dialog_with_mask(tokenizer, messages + [{"role": "assistant", "content": answer}])
    return ids[-max_len:], mask[-max_len:]


__all__ = ["encode_dialog", "encode_dialog_with_mask", "encode_reply", "encode_reply_with_mask", "normalize_dialog",
           "ChatFormatError", "SPECIAL_TAGS", "UNSAFE_ERROR", "CHAT_TEMPERATURE", "CHAT_TOP_P", "B_INST", "E_INST", "B_SYS", "E_SYS"]
