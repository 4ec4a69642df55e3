"""A multi-turn chat session in the Llama-2 format (`camelid chat` is its terminal front end, camelid/cli/chat.py).

History that no longer fits the context is trimmed from the oldest exchanges (the system prompt is kept
and folded into the first remaining user turn, as the format requires), with a notice.
"""

from __future__ import annotations

from collections.abc import Iterator

from camelid.chat_format import CHAT_TEMPERATURE, CHAT_TOP_P, encode_dialog, normalize_dialog
from camelid.errors import CamelidError
from camelid.infer.engine import Engine, Request
from camelid.infer.sampling import SamplingParams
from camelid.infer.text import TextStream


class ChatSession:
    def __init__(self, model_or_engine, tokenizer, system: str | None = None, max_new_tokens: int = 512,
                 temperature: float = CHAT_TEMPERATURE, top_p: float = CHAT_TOP_P, top_k: int = 0,
                 seed: int | None = None, max_seq_len: int | None = None, compile: bool = False):
        if isinstance(model_or_engine, Engine):
            self.engine = model_or_engine
        else:
            self.engine = Engine(model_or_engine, max_batch=1, max_seq_len=max_seq_len, seed=seed, compile=compile)
        self.tok = tokenizer
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.sampling = SamplingParams(temperature, top_p, top_k)
        self.history: list[dict] = []  # user / assistant messages, alternating
        self.trimmed = 0  # exchanges dropped from the front for the last prompt
        self.last_finish_reason: str | None = None

    def reset(self) -> None:
        self.history = []

    def set_system(self, text: str | None) -> None:
        if text:
            normalize_dialog([{"role": "system", "content": text}, {"role": "user", "content": ""}])
        self.system = text or None

    def _messages(self, history):
        return ([{"role": "system", "content": self.system}] if self.system else []) + history

    def build_prompt(self, user: str) -> tuple[list[int], int]:
        """Prompt ids for the next answer and the room left for it; trims the oldest exchanges if needed."""
        ctx = self.engine.max_seq_len
        history = self.history + [{"role": "user", "content": user}]
        self.trimmed = 0
        while True:
            ids = encode_dialog(self.tok, self._messages(history))
            room = ctx - len(ids)
            if room >= min(self.max_new_tokens, max(ctx // 4, 1)) or len(history) == 1:
                break
            history = history[2:]  # drop the oldest user/assistant exchange
            self.trimmed += 1
        if room <= 0:
            raise CamelidError(f"the message is too long: {len(ids)} prompt tokens, the context is {ctx}")
        return ids, min(room, self.max_new_tokens)

    def send(self, user: str) -> Iterator[str]:
        """Stream the assistant's answer to `user`; the exchange joins the history when the answer ends."""
        ids, room = self.build_prompt(user)
        if self.trimmed:
            self.history = self.history[2 * self.trimmed:]
        req = self.engine.add(Request(ids, room, self.sampling, (self.tok.eos_id,)))
        ts = TextStream(self.tok)
        try:
            while not req.done:
                for ev in self.engine.step():
                    if ev.request is req:
                        out = ts.push(ev.token) if ev.token is not None else ""
                        if ev.finish_reason:
                            out += ts.finish()
                        if out:
                            yield out
        finally:
            if not req.done:  # interrupted: keep what was said so far
                self.engine.abort(req)
                ts.finish()
            self.last_finish_reason = req.finish_reason
            self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": ts.text}]

    def ask(self, user: str) -> str:
        return "".join(self.send(user))
