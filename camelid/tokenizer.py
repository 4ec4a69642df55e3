"""LLaMA's tokenizer: SentencePiece BPE with single digits and byte fallback (LLaMA-1 §2.1).

`Tokenizer` is a thin wrapper over the `sentencepiece` library itself: ids and decoding are exactly
the library's, so a `tokenizer.model` from Meta (or any LLaMA-compatible one) loads unchanged, and
`Tokenizer.train` produces one with Meta's own trainer settings (`META_TRAINER_SPEC`, read from the
trainer spec that Meta's `tokenizer.model` carries).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from camelid.errors import CamelidError

# Meta's trainer spec for the LLaMA tokenizer (every field that differs from sentencepiece's defaults
# or that the recipe names). `input_sentence_size` and `num_threads` are Meta's too; both only
# matter for corpora far larger than a laptop's.
META_TRAINER_SPEC: dict = dict(
    model_type="bpe",
    vocab_size=32000,
    character_coverage=0.99995,
    split_digits=True,
    byte_fallback=True,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    max_sentencepiece_length=16,
    max_sentence_length=4192,
    input_sentence_size=200_000_000,
    shuffle_input_sentence=True,
    seed_sentencepiece_size=1_000_000,
    vocabulary_output_piece_score=True,
    hard_vocab_limit=True,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    unk_surface=" \u2047 ",
)

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ""}


def _iter_files(inputs: Sequence[str | os.PathLike]) -> Iterator[Path]:
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not files:
                raise CamelidError(f"{p}: folder has no files")
            yield from files
        elif p.is_file():
            yield p
        else:
            raise CamelidError(f"{p}: no such file or folder")


def _lines_of_files(inputs: Sequence[str | os.PathLike]) -> Iterator[str]:
    for f in _iter_files(inputs):
        name = f.name
        if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".parquet")):
            raise CamelidError(
                f"{f}: `Tokenizer.train` reads plain text; for JSONL/Parquet pass documents "
                "(e.g. from camelid.data.sources) or use `camelid tokenizer train --mixture FILE.toml`")
        with open(f, "rb") as fh:
            for raw in fh:
                yield raw.decode("utf-8", errors="replace")


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    """Documents -> the lines SentencePiece trains on (it reads one 'sentence' per line)."""
    for text in texts:
        if not isinstance(text, str):
            raise CamelidError(f"Tokenizer.train: expected str documents, got {type(text).__name__}")
        for line in text.split("\n"):
            line = line.rstrip("\r")
            if line.strip():
                yield line


class Tokenizer:
    """A SentencePiece model, loaded from `model_path` (a `tokenizer.model` file, or a folder holding one)."""

    def __init__(self, model_path: str | os.PathLike):
        p = Path(model_path)
        if p.is_dir():
            p = p / "tokenizer.model"
        if not p.is_file():
            raise CamelidError(f"{p}: no tokenizer model there (train one with `camelid tokenizer train`)")
        self.model_path = str(p)
        self._proto = p.read_bytes()
        self._load()

    def _load(self) -> None:
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self._proto)
        except Exception as e:  # sentencepiece raises a bare RuntimeError/OSError
            raise CamelidError(f"{self.model_path}: not a SentencePiece model ({e})") from None

    # A Tokenizer crosses process boundaries (data-prep workers) as its serialized model.
    def __getstate__(self):
        return {"model_path": self.model_path, "_proto": self._proto}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._load()

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size})"

    # ---- properties -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    @property
    def sha256(self) -> str:
        """Content hash of the model file: two tokenizers with the same hash give the same ids."""
        return hashlib.sha256(self._proto).hexdigest()

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)

    def is_byte(self, i: int) -> bool:
        return self.sp.is_byte(i)

    # ---- encode / decode --------------------------------------------------------------------------
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self.sp.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False,
                     num_threads: int = -1) -> list[list[int]]:
        """Encode many texts at once with sentencepiece's multithreaded batch encoder.

        `num_threads=-1` lets sentencepiece use every core; pass 1 inside worker processes.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of strings; use encode() for one string")
        return self.sp.encode(list(texts), add_bos=bos, add_eos=eos, num_threads=num_threads)

    def decode(self, ids: Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.sp.decode(list(ids))

    def encode_pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    # ---- training ---------------------------------------------------------------------------------
    @classmethod
    def train(cls, inputs_or_text_iterator, out_dir: str | os.PathLike, vocab_size: int = 32000,
              **overrides) -> "Tokenizer":
        """Train a LLaMA-style tokenizer and write `out_dir/tokenizer.model` (and `tokenizer.vocab`).

        `inputs_or_text_iterator` is either a list of plain-text files/folders (`pathlib.Path`s, or
        strings naming existing files), or an iterable of documents (str). SentencePiece reads one "sentence" per line: documents are split at
        newlines and blank lines dropped; lines longer than `max_sentence_length` (4,192 bytes, as
        Meta) are skipped by SentencePiece. `overrides` replace any entry of `META_TRAINER_SPEC`
        (for example `input_sentence_size=300_000` to sample lines from a large corpus quickly).
        """
        spec = dict(META_TRAINER_SPEC)
        spec["vocab_size"] = int(vocab_size)
        unknown = set(overrides) - set(spec) - {"num_threads", "user_defined_symbols", "control_symbols",
                                                "required_chars", "seed_sentencepiece_size", "use_all_vocab",
                                                "train_extremely_large_corpus", "minloglevel",
                                                "random_seed"}
        if unknown:
            raise CamelidError(f"Tokenizer.train: unknown option(s) {sorted(unknown)}")
        spec.update(overrides)
        spec.setdefault("num_threads", os.cpu_count() or 1)
        spec.setdefault("minloglevel", 2)
        random_seed = spec.pop("random_seed", 0)
        if spec["vocab_size"] < 259 + 8 and spec.get("byte_fallback"):
            raise CamelidError(f"vocab_size {spec['vocab_size']} is too small: byte fallback alone takes "
                               "259 ids (256 bytes + <unk> <s> </s>)")

        if isinstance(inputs_or_text_iterator, (str, os.PathLike)):
            inputs_or_text_iterator = [inputs_or_text_iterator]
        if isinstance(inputs_or_text_iterator, (list, tuple)) and all(
                isinstance(x, os.PathLike) or (isinstance(x, str) and os.path.exists(x))
                for x in inputs_or_text_iterator) and inputs_or_text_iterator:
            files = list(_iter_files(inputs_or_text_iterator))  # fail early on a missing input
            lines: Iterable[str] = _lines_of_files(files)
            lines = _sentences(lines)
        else:
            lines = _sentences(inputs_or_text_iterator)

        counted = _Counting(lines)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = io.BytesIO()
        if random_seed is not None:  # sentencepiece's sampling is seeded globally
            spm.set_random_generator_seed(int(random_seed))
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(counted), model_writer=model, **spec)
        except CamelidError:
            raise
        except RuntimeError as e:
            msg = str(e).strip()
            if counted.n == 0:
                raise CamelidError("Tokenizer.train: no text to train on (every input was empty)") from None
            hint = ""
            if "Vocabulary size" in msg or "vocab_size" in msg:
                hint = (" -- the text is too small or too uniform for this vocabulary; use more text, a "
                        "smaller --vocab-size, or hard_vocab_limit=False")
            raise CamelidError(f"sentencepiece could not train on {counted.n} lines: {msg}{hint}") from None
        if counted.n == 0:
            raise CamelidError("Tokenizer.train: no text to train on (every input was empty)")
        _atomic_write(out / "tokenizer.model", model.getvalue())
        tok = cls(out / "tokenizer.model")
        vocab = "".join(f"{tok.sp.id_to_piece(i)}\t{tok.sp.get_score(i):g}\n" for i in range(tok.vocab_size))
        _atomic_write(out / "tokenizer.vocab", vocab.encode("utf-8"))
        return tok


class _Counting:
    def __init__(self, it: Iterable[str]):
        self.it, self.n = it, 0

    def __iter__(self):
        for x in self.it:
            self.n += 1
            yield x


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


__all__ = ["Tokenizer", "META_TRAINER_SPEC"]
