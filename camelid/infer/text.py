"""From tokens to text while streaming: incremental detokenization and stop strings.

SentencePiece pieces do not map one to one onto text: a character may span several byte-fallback
tokens, and a piece's leading "▁" becomes a space only after another piece. `TextStream` decodes a
short window of recent tokens and emits only the new, complete part of the text (the method of Hugging
Face's text-generation-inference). Stop strings are matched on the text; text that might be the start
of a stop string is held back until it is known not to be.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tok = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens already turned into text
        self.text = ""  # all text so far (cut at a stop string once matched)
        self._sent = 0  # characters of self.text already returned
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the text that can safely be shown now (maybe empty)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        before = self.tok.decode(self.ids[self._prefix:self._read])
        after = self.tok.decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: return whatever is still held back."""
        if not self.stopped and self._read < len(self.ids):
            rest = self.tok.decode(self.ids[self._prefix:])[len(self.tok.decode(self.ids[self._prefix:self._read])):]
            self.text += rest
            self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stop and not self.stopped:
            start = max(0, self._sent - max(len(s) for s in self.stop))
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.stopped = True
                final = True
        safe = len(self.text)
        if not final and self.stop:
            # hold back a tail that could still grow into a stop string
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        safe = min(safe, len(self.text) - k)
                        break
        out = self.text[self._sent:safe]
        self._sent = max(self._sent, safe)
        return out
