"""camelid.Tokenizer: Meta's settings, digits, byte fallback, round trips, parity with sentencepiece."""

from __future__ import annotations

import os
import pickle

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st
from sentencepiece import sentencepiece_model_pb2 as pb

from camelid import Tokenizer
from camelid.cli import main as cli_main
from camelid.errors import CamelidError

CORPUS = [
    "The quick brown fox jumps over the lazy dog in 1999 and again in 2023.\n" * 3,
    "def add(a, b):\n    return a + b  # 42\n\nclass Foo:\n    pass\n",
    "In the beginning God created the heaven and the earth. And the earth was without form.\n",
] * 20


@pytest.fixture(scope="session")
def corpus_text():
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)][:40] + CORPUS


@pytest.fixture(scope="session")
def tok(tmp_path_factory, corpus_text) -> Tokenizer:
    return Tokenizer.train(corpus_text, tmp_path_factory.mktemp("tok"), vocab_size=700)


@pytest.fixture(scope="session")
def llama_model_path():
    import mistral_common as mc
    path = os.path.join(os.path.dirname(mc.__file__), "data", "tokenizer.model.v1")
    if not os.path.isfile(path):
        pytest.skip("mistral-common does not ship tokenizer.model.v1")
    return path


def _proto(path) -> pb.ModelProto:
    m = pb.ModelProto()
    m.ParseFromString(open(path, "rb").read())
    return m


def test_trained_model_carries_metas_settings(tok):
    m = _proto(tok.model_path)
    ts, ns = m.trainer_spec, m.normalizer_spec
    assert ts.model_type == pb.TrainerSpec.BPE
    assert ts.vocab_size == 700 == tok.vocab_size
    assert ts.split_digits and ts.byte_fallback and ts.allow_whitespace_only_pieces
    assert abs(ts.character_coverage - 0.99995) < 1e-7
    assert (ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id) == (0, 1, 2, -1)
    assert ns.name == "identity" and ns.add_dummy_prefix and not ns.remove_extra_whitespaces
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (1, 2, -1, 0)
    assert tok.id_to_piece(1) == "<s>" and tok.id_to_piece(2) == "</s>"


def test_meta_spec_matches_a_llama_compatible_model(llama_model_path):
    """Our trainer spec equals the one a LLaMA-compatible tokenizer.model records (except its corpus)."""
    from camelid.tokenizer import META_TRAINER_SPEC

    m = _proto(llama_model_path)
    ts = m.trainer_spec
    for k, v in META_TRAINER_SPEC.items():
        if k in ("normalization_rule_name", "vocab_size"):
            continue
        got = getattr(m.normalizer_spec if k in ("add_dummy_prefix", "remove_extra_whitespaces") else ts, k)
        if k == "model_type":
            got = pb.TrainerSpec.ModelType.Name(got).lower()
        assert got == pytest.approx(v) if isinstance(v, float) else got == v, k


@pytest.mark.parametrize("which", ["trained", "llama"])
def test_numbers_split_into_single_digits(which, tok, llama_model_path):
    t = tok if which == "trained" else Tokenizer(llama_model_path)
    assert t.encode_pieces("2023") == ["▁", "2", "0", "2", "3"]
    assert t.encode_pieces("in 2023")[-5:] == ["▁", "2", "0", "2", "3"]
    # with a leading space, add_dummy_prefix makes "▁▁": still never a digit joined to anything
    assert t.encode_pieces(" 2023")[-4:] == ["2", "0", "2", "3"]
    for i in range(t.vocab_size):
        if t.is_byte(i) or t.sp.is_control(i) or t.sp.is_unknown(i):
            continue
        piece = t.id_to_piece(i)
        if any(c in "0123456789" for c in piece):  # split_digits covers the ASCII digits (not e.g. "²")
            assert len(piece) == 1, f"piece {piece!r} joins a digit to another character"


def test_unseen_characters_fall_back_to_bytes_and_decode_exactly(tok):
    text = "漢字 🦙 Ωμέγα ∮ 𝔘"
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert sum(tok.is_byte(i) for i in ids) >= len("漢字🦙Ωμέγα∮𝔘".encode()) - 8
    assert tok.decode(ids) == text
    assert tok.id_to_piece(tok.encode("漢")[-1]).startswith("<0x")


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=80)


@settings(max_examples=200, deadline=None)
@given(s=_text)
def test_decode_encode_round_trip(tok, s):
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=100, deadline=None)
@given(s=_text)
def test_ids_equal_sentencepiece_for_llama_compatible_model(llama_model_path, s):
    ours = _cached_llama(llama_model_path)
    sp = _cached_sp(llama_model_path)
    assert ours.encode(s) == sp.encode(s)
    assert ours.encode(s, bos=True, eos=True) == [sp.bos_id(), *sp.encode(s), sp.eos_id()]
    assert ours.decode(sp.encode(s)) == sp.decode(sp.encode(s))


_CACHE: dict = {}


def _cached_llama(path):
    return _CACHE.setdefault(("ours", path), Tokenizer(path))


def _cached_sp(path):
    return _CACHE.setdefault(("sp", path), spm.SentencePieceProcessor(model_file=path))


def test_llama_model_loads_unchanged(llama_model_path, corpus_text):
    t = Tokenizer(llama_model_path)
    sp = spm.SentencePieceProcessor(model_file=llama_model_path)
    assert t.vocab_size == 32000 and (t.bos_id, t.eos_id, t.pad_id) == (1, 2, -1)
    texts = corpus_text[:30] + ["", "  two  spaces", "tab\there", "línea ñ 漢字 🦙"]
    assert t.encode_batch(texts) == sp.encode(texts)
    assert t.encode_batch(texts, bos=True) == sp.encode(texts, add_bos=True)
    assert [t.decode(x) for x in sp.encode(texts)] == sp.decode(sp.encode(texts))
    assert t.id_to_piece(1000) == sp.id_to_piece(1000)


def test_encode_batch_equals_encode(tok, corpus_text):
    texts = corpus_text[:50]
    assert tok.encode_batch(texts, eos=True) == [tok.encode(x, eos=True) for x in texts]
    assert tok.encode_batch(texts, num_threads=1) == tok.encode_batch(texts)
    with pytest.raises(TypeError):
        tok.encode_batch("a string")


def test_bos_eos_and_pickle(tok):
    ids = tok.encode("hello world", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "hello world"
    t2 = pickle.loads(pickle.dumps(tok))
    assert t2.encode("hello world") == tok.encode("hello world") and t2.sha256 == tok.sha256


def test_train_from_files_and_folders(tmp_path, corpus_text):
    d = tmp_path / "texts"
    d.mkdir()
    for i, text in enumerate(corpus_text[:30]):
        (d / f"{i}.txt").write_text(text)
    t1 = Tokenizer.train([d], tmp_path / "a", vocab_size=500)
    t2 = Tokenizer.train([str(p) for p in sorted(d.iterdir())], tmp_path / "b", vocab_size=500)
    assert (tmp_path / "a" / "tokenizer.model").is_file() and (tmp_path / "a" / "tokenizer.vocab").is_file()
    assert t1.vocab_size == t2.vocab_size == 500
    assert Tokenizer(tmp_path / "a").vocab_size == 500  # a folder holding tokenizer.model loads too


def test_training_is_deterministic(tmp_path, corpus_text):
    a = Tokenizer.train(corpus_text, tmp_path / "a", vocab_size=500)
    b = Tokenizer.train(corpus_text, tmp_path / "b", vocab_size=500)
    assert a.sha256 == b.sha256


def test_clear_errors(tmp_path):
    with pytest.raises(CamelidError, match="no such file"):
        Tokenizer.train([tmp_path / "missing.txt"], tmp_path / "o", vocab_size=500)
    with pytest.raises(CamelidError, match="no text"):
        Tokenizer.train(["", "   \n\n"], tmp_path / "o", vocab_size=500)
    with pytest.raises(CamelidError, match="too small"):
        Tokenizer.train(["abc"], tmp_path / "o", vocab_size=100)
    with pytest.raises(CamelidError, match="too small|vocabulary"):
        Tokenizer.train(["a tiny text"], tmp_path / "o", vocab_size=5000)
    with pytest.raises(CamelidError, match="no tokenizer model"):
        Tokenizer(tmp_path / "nothing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(CamelidError, match="not a SentencePiece model"):
        Tokenizer(bad)
    with pytest.raises(CamelidError, match="unknown option"):
        Tokenizer.train(["abc"], tmp_path / "o", vocab_size=500, vocabsize=3)


def test_cli_train_encode_info(tmp_path, capsys, corpus_text):
    f = tmp_path / "in.txt"
    f.write_text("".join(corpus_text[:30]))
    with pytest.raises(SystemExit) as e:
        cli_main(["tokenizer", "train", "--input", str(f), "--vocab-size", "400", "--out", str(tmp_path / "t")])
    assert e.value.code == 0 and (tmp_path / "t" / "tokenizer.model").is_file()
    with pytest.raises(SystemExit) as e:
        cli_main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "t"), "in 2023"])
    assert e.value.code == 0 and '"2", "0", "2", "3"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli_main(["tokenizer", "train", "--input", str(tmp_path / "nope"), "--vocab-size", "400", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["tokenizer", "info", str(tmp_path / "t" / "tokenizer.model")])
    assert e.value.code == 0 and "split_digits True" in capsys.readouterr().out


def test_cli_train_on_an_embedded_corpus(tmp_path):
    with pytest.raises(SystemExit) as e:
        cli_main(["tokenizer", "train", "--corpus", "python-docs", "--vocab-size", "600", "--out", str(tmp_path)])
    assert e.value.code == 0
    assert Tokenizer(tmp_path).decode(Tokenizer(tmp_path).encode("for x in range(10):")) == "for x in range(10):"
