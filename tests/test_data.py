"""Sources, cleaning, the embedded corpus and `prepare_data`: correctness, idempotence, bad input."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from camelid import Tokenizer
from camelid.cli import main as cli_main
from camelid.config import CONFIG_DIR
from camelid.data import MixtureSampler, prepare_data, read_manifest
from camelid.data import prepare as prepare_mod
from camelid.data import sources as sources_mod
from camelid.data.corpus import iter_embedded
from camelid.data.mixture import EMBEDDED_MIXTURE_TOML, embedded_mixture, load_mixture
from camelid.data.sources import SourceSpec, iter_documents
from camelid.errors import CamelidError

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def _doc(i: int, n: int = 40) -> str:
    rng = np.random.default_rng(i)
    return f"Document {i}. " + " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), n)) + ".\n"


@pytest.fixture(scope="session")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer.train([_doc(i) for i in range(300)] + ["def f(x):\n    return x + 1\n"] * 5,
                           tmp_path_factory.mktemp("tok"), vocab_size=400)


def _corpus(root: Path) -> dict:
    """A small three-source mixture on disk: text folder, JSONL (.gz), JSONL with duplicates."""
    (root / "books").mkdir(parents=True)
    for i in range(30):
        (root / "books" / f"b{i:02d}.txt").write_text(_doc(i, 200))
    with gzip.open(root / "web.jsonl.gz", "wt") as f:
        for i in range(100, 300):
            f.write(json.dumps({"text": _doc(i), "url": f"u{i}"}) + "\n")
    with open(root / "wiki.jsonl", "w") as f:
        for i in range(300, 400):
            f.write(json.dumps({"body": _doc(i)}) + "\n")
        for i in range(300, 310):  # exact duplicates
            f.write(json.dumps({"body": _doc(i)}) + "\n")
        f.write(json.dumps({"body": "short"}) + "\n")  # below min_chars
    return {"name": "test", "sources": {
        "books": {"type": "text", "paths": [str(root / "books")], "weight": 0.2},
        "web": {"type": "jsonl", "paths": [str(root / "web.jsonl.gz")], "weight": 0.5},
        "wiki": {"type": "jsonl", "paths": [str(root / "wiki.jsonl")], "field": "body", "weight": 0.3,
                 "val_fraction": 0.05},
    }}


@pytest.fixture(scope="session")
def mixture(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, tok, mixture):
    out = tmp_path_factory.mktemp("prepared")
    return out, prepare_data(tok.model_path, out, mixture=mixture, workers=1, progress=False)


def _shards(out: Path, m: dict) -> dict:
    return {(name, split, sh["file"]): (out / e["dir"] / sh["file"]).read_bytes()
            for name, e in m["sources"].items() for split in ("train", "val") for sh in e["shards"][split]}


def _docs_of(out: Path, m: dict, tok: Tokenizer, name: str, split: str) -> list[str]:
    e = m["sources"][name]
    arr = np.concatenate([np.fromfile(out / e["dir"] / sh["file"], dtype=m["dtype"]) for sh in e["shards"][split]])
    bos = np.nonzero(arr == tok.bos_id)[0]
    eos = np.nonzero(arr == tok.eos_id)[0]
    assert len(bos) == len(eos) and (bos < eos).all() and bos[0] == 0 and eos[-1] == len(arr) - 1
    assert (bos[1:] == eos[:-1] + 1).all()  # every document is exactly <s> ... </s>, back to back
    return [tok.decode(arr[b + 1:e].tolist()) for b, e in zip(bos, eos)]


# ---- prepare ---------------------------------------------------------------------------------------

def test_prepare_writes_shards_with_document_boundaries(prepared, tok, mixture):
    out, m = prepared
    assert m["complete"] and m["dtype"] == "uint16" and m["format"] == "camelid-tokens/1"
    assert set(m["sources"]) == {"books", "web", "wiki"}
    assert m["mixture"]["weights"] == pytest.approx({"books": 0.2, "web": 0.5, "wiki": 0.3})
    books = _docs_of(out, m, tok, "books", "train") + _docs_of(out, m, tok, "books", "val")
    assert sorted(books) == sorted(_doc(i, 200) for i in range(30))  # nothing lost, nothing added
    e = m["sources"]["books"]
    assert e["documents"] == 30 and e["train_documents"] + e["val_documents"] == 30
    assert e["val_documents"] >= 1  # held out even though 1% of 30 docs rounds to 0
    for e in m["sources"].values():
        assert e["tokens"] == e["train_tokens"] + e["val_tokens"]
        assert {"documents", "tokens", "bytes", "content_hash", "shards", "counts"} <= set(e)
        for sh in e["shards"]["train"]:
            assert os.path.getsize(out / e["dir"] / sh["file"]) == 2 * sh["tokens"]
            assert np.memmap(out / e["dir"] / sh["file"], dtype=np.uint16, mode="r").shape == (sh["tokens"],)


def test_validation_split_is_held_out(prepared, tok):
    out, m = prepared
    train, val = set(_docs_of(out, m, tok, "wiki", "train")), set(_docs_of(out, m, tok, "wiki", "val"))
    assert val and not (train & val)
    assert len(train) + len(val) == 100


def test_dedup_and_quality_filters_are_counted(prepared):
    _, m = prepared
    c = m["sources"]["wiki"]["counts"]
    assert c["read"] == 111 and c["duplicates"] == 10 and c["too_short"] == 1
    assert m["sources"]["wiki"]["documents"] == 100


def test_filters_are_switchable(tmp_path, tok, mixture):
    m = prepare_data(tok.model_path, tmp_path, mixture=mixture, workers=1, progress=False,
                     overrides={"dedup": False, "min_chars": 0})
    c = m["sources"]["wiki"]["counts"]
    assert c["duplicates"] == 0 and "too_short" not in c and m["sources"]["wiki"]["documents"] == 111


def test_printable_filter(tmp_path, tok):
    (tmp_path / "a.txt").write_text("good text " * 10)
    (tmp_path / "b.txt").write_text("\x00\x01\x02\x03" * 20 + "abc")
    m = prepare_data(tok.model_path, tmp_path / "out", progress=False, workers=1,
                     mixture={"sources": {"s": {"type": "text", "paths": [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")],
                                                "val_fraction": 0}}})
    assert m["sources"]["s"]["counts"]["unprintable"] == 1 and m["sources"]["s"]["documents"] == 1


def test_prepare_is_idempotent(prepared, tok, mixture):
    out, m = prepared
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = prepare_data(tok.model_path, out, mixture=mixture, workers=2, progress=False)
    assert again == m
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing rewritten


def test_parallel_output_equals_serial(prepared, tok, mixture, tmp_path):
    out, m = prepared
    m2 = prepare_data(tok.model_path, tmp_path, mixture=mixture, workers=2, progress=False, shard_tokens=3000)
    m1 = prepare_data(tok.model_path, tmp_path / "serial", mixture=mixture, workers=1, progress=False,
                      shard_tokens=3000)
    assert _shards(tmp_path, m2) == _shards(tmp_path / "serial", m1)
    assert m2["data_hash"] == m1["data_hash"]
    assert len(m2["sources"]["web"]["shards"]["train"]) > 1  # several shards, documents never cut
    # and the same tokens as the single-shard run, shard for shard concatenated
    for name in m["sources"]:
        a = b"".join(v for (n, s, _), v in sorted(_shards(out, m).items()) if n == name and s == "train")
        b = b"".join(v for (n, s, _), v in sorted(_shards(tmp_path, m2).items()) if n == name and s == "train")
        assert a == b


def test_changed_source_is_rebuilt_alone(tmp_path, tok, mixture):
    m = prepare_data(tok.model_path, tmp_path, mixture=mixture, workers=1, progress=False)
    books = Path(mixture["sources"]["books"]["paths"][0])
    extra = books.parent / "books2"
    extra.mkdir(exist_ok=True)
    (extra / "new.txt").write_text(_doc(999, 100))
    mix2 = json.loads(json.dumps(mixture))
    mix2["sources"]["books"]["paths"].append(str(extra))
    m2 = prepare_data(tok.model_path, tmp_path, mixture=mix2, workers=1, progress=False)
    assert m2["sources"]["books"]["documents"] == 31
    for name in ("web", "wiki"):
        assert m2["sources"][name] == m["sources"][name]
    assert not (tmp_path / m["sources"]["books"]["dir"]).exists()  # the stale version is gone


class _Boom(KeyboardInterrupt):
    pass


def test_interrupted_prepare_leaves_no_trusted_partial_shard(tmp_path, tok, mixture, monkeypatch):
    real = prepare_mod._ShardWriter.write
    calls = {"n": 0}

    def crashing_write(self, out, sizes):
        calls["n"] += 1
        if calls["n"] == 3:  # in the middle of a source, after half a write is on disk
            if self._f is None:
                self._open()
            self._f.write(out[: len(out) // 2].tobytes())
            raise _Boom()
        return real(self, out, sizes)

    monkeypatch.setattr(prepare_mod._ShardWriter, "write", crashing_write)
    with pytest.raises(_Boom):
        prepare_data(tok.model_path, tmp_path, mixture=mixture, workers=1, progress=False, shard_tokens=2000)
    monkeypatch.setattr(prepare_mod._ShardWriter, "write", real)
    if (tmp_path / "manifest.json").exists():  # whatever it lists is whole; it does not claim completeness
        m = read_manifest(tmp_path)
        assert not m["complete"]
        assert not prepare_mod.verify(tmp_path)[1:]  # only the "not complete" problem
        with pytest.raises(CamelidError, match="did not finish"):
            MixtureSampler(tmp_path, seq_len=8)
    assert not list(tmp_path.glob(".tmp-prepare-*"))
    m = prepare_data(tok.model_path, tmp_path, mixture=mixture, workers=1, progress=False, shard_tokens=2000)
    assert m["complete"] and prepare_mod.verify(tmp_path) == []


def test_interrupted_rebuild_untrusts_the_old_version(tmp_path, tok, mixture, monkeypatch):
    prepare_data(tok.model_path, tmp_path, mixture=mixture, workers=1, progress=False)
    mix2 = json.loads(json.dumps(mixture))
    mix2["sources"]["web"]["min_chars"] = 20  # a changed setting: web must be rebuilt

    def boom(*a, **k):
        raise _Boom()

    monkeypatch.setattr(prepare_mod, "_finalize_source", boom)
    with pytest.raises(_Boom):
        prepare_data(tok.model_path, tmp_path, mixture=mix2, workers=1, progress=False)
    m = read_manifest(tmp_path)
    assert "web" not in m["sources"] and not m["complete"]


def test_damaged_shard_is_refused_and_rebuilt(tmp_path, tok, mixture):
    m = prepare_data(tok.model_path, tmp_path, mixture=mixture, workers=1, progress=False)
    e = m["sources"]["web"]
    shard = tmp_path / e["dir"] / e["shards"]["train"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CamelidError, match="damaged or partial"):
        MixtureSampler(tmp_path, seq_len=16)
    assert any("bytes" in p for p in prepare_mod.verify(tmp_path))
    prepare_data(tok.model_path, tmp_path, mixture=mixture, workers=1, progress=False)
    assert prepare_mod.verify(tmp_path) == []


def test_uint32_for_large_vocabularies(tmp_path):
    import mistral_common as mc
    # a 32k vocabulary still fits uint16; check the rule itself on the manifest field
    path = os.path.join(os.path.dirname(mc.__file__), "data", "tokenizer.model.v1")
    (tmp_path / "a.txt").write_text("Hello world, " * 20)
    m = prepare_data(path, tmp_path / "o", progress=False, workers=1,
                     mixture={"sources": {"s": {"type": "text", "paths": [str(tmp_path / "a.txt")]}}})
    assert m["dtype"] == "uint16" and m["tokenizer"]["vocab_size"] == 32000


# ---- bad input -------------------------------------------------------------------------------------

def test_invalid_utf8_is_replaced_and_counted(tmp_path, tok):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait, and some more text to pass the filter \xff\xfe end")
    (tmp_path / "good.txt").write_text("a perfectly fine document of text")
    spec = {"type": "text", "paths": [str(tmp_path)], "extensions": [".txt"], "val_fraction": 0}
    m = prepare_data(tok.model_path, tmp_path / "o", mixture={"sources": {"s": spec}}, progress=False, workers=1)
    c = m["sources"]["s"]["counts"]
    assert c["invalid_utf8_docs"] == 1 and c["invalid_utf8_bytes"] == 3 and m["sources"]["s"]["documents"] == 2
    stats = Counter()
    docs = list(iter_documents(SourceSpec(name="s", **spec), stats))
    assert "caf\ufffd au lait" in docs[0]
    skip = SourceSpec(name="s", **{**spec, "on_invalid_utf8": "skip"})
    assert len(list(iter_documents(skip))) == 1
    with pytest.raises(CamelidError, match="bad.txt: invalid UTF-8 at byte 3"):
        list(iter_documents(SourceSpec(name="s", **{**spec, "on_invalid_utf8": "error"})))


def test_malformed_jsonl_names_file_and_line(tmp_path, tok):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "one fine document here"}\n\n{"text": "two fine document here"}\n{"text": broken\n'
                 '{"text": "four fine document here"}\n')
    mix = {"sources": {"s": {"type": "jsonl", "paths": [str(f)], "val_fraction": 0}}}
    with pytest.raises(CamelidError, match=r"d\.jsonl:4: malformed JSON.*--skip-bad"):
        prepare_data(tok.model_path, tmp_path / "o", mixture=mix, progress=False, workers=1)
    m = prepare_data(tok.model_path, tmp_path / "o", mixture=mix, progress=False, workers=1,
                     overrides={"skip_bad": True})
    assert m["sources"]["s"]["counts"]["bad_records"] == 1 and m["sources"]["s"]["documents"] == 3


def test_jsonl_line_numbers_in_byte_ranges(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_mod, "JSONL_RANGE_BYTES", 100)
    f = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"document number {i}"}) for i in range(50)]
    f.write_text("\n".join(lines) + "\n")
    spec = SourceSpec(name="s", type="jsonl", paths=[str(f)])
    assert len(sources_mod.plan_units(spec)) > 5
    assert list(iter_documents(spec)) == [f"document number {i}" for i in range(50)]  # no line lost or doubled
    lines[37] = '{"text": oops}'
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(CamelidError, match=r"d\.jsonl:38: malformed JSON"):
        list(iter_documents(spec))


def test_missing_field_and_column(tmp_path, tok):
    f = tmp_path / "d.jsonl"
    f.write_text('{"content": "some text here"}\n')
    with pytest.raises(CamelidError, match=r"d\.jsonl:1: no field 'text' \(fields: content\)"):
        list(iter_documents(SourceSpec(name="s", type="jsonl", paths=[str(f)])))
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table({"content": ["first parquet document", "second parquet document"] * 10})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=7)
    with pytest.raises(CamelidError, match=r"d\.parquet: no column 'text' \(columns: content\)"):
        list(iter_documents(SourceSpec(name="s", type="parquet", paths=[str(tmp_path / "d.parquet")])))
    spec = SourceSpec(name="s", type="parquet", paths=[str(tmp_path / "d.parquet")], column="content")
    assert len(sources_mod.plan_units(spec)) == 3  # one unit per row group
    assert list(iter_documents(spec)) == ["first parquet document", "second parquet document"] * 10
    m = prepare_data(tok.model_path, tmp_path / "o", progress=False, workers=1, mixture={"sources": {"p": {
        "type": "parquet", "paths": [str(tmp_path / "d.parquet")], "column": "content", "dedup": False}}})
    assert m["sources"]["p"]["documents"] == 20


def test_empty_source_is_a_clear_error(tmp_path, tok):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CamelidError, match="no files found"):
        prepare_data(tok.model_path, tmp_path / "o", progress=False, workers=1,
                     mixture={"sources": {"s": {"type": "text", "paths": [str(tmp_path / "empty")]}}})
    (tmp_path / "empty" / "a.txt").write_text("   \n")
    with pytest.raises(CamelidError, match="source 's' is empty.*too_short 1"):
        prepare_data(tok.model_path, tmp_path / "o", progress=False, workers=1,
                     mixture={"sources": {"s": {"type": "text", "paths": [str(tmp_path / "empty")]}}})
    with pytest.raises(CamelidError, match="no such file"):
        prepare_data(tok.model_path, tmp_path / "o", progress=False, workers=1,
                     mixture={"sources": {"s": {"type": "jsonl", "paths": [str(tmp_path / "none.jsonl")]}}})


def test_text_splits(tmp_path):
    (tmp_path / "t.txt").write_text("para one\nline two\n\n\npara two\n\nline\n")
    base = dict(name="s", type="text", paths=[str(tmp_path / "t.txt")])
    assert list(iter_documents(SourceSpec(**base))) == ["para one\nline two\n\n\npara two\n\nline\n"]
    assert list(iter_documents(SourceSpec(**base, split="paragraph"))) == ["para one\nline two\n", "para two\n", "line\n"]
    assert list(iter_documents(SourceSpec(**base, split="line"))) == ["para one", "line two", "para two", "line"]


def test_bad_mixture_files(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text("[sources.a]\ntype = 'csv'\npaths = ['x']\n")
    with pytest.raises(CamelidError, match="type must be one of"):
        load_mixture(f)
    f.write_text("[sources.a]\ntype = 'text'\npath = ['x']\n")
    with pytest.raises(CamelidError, match=r"unknown key\(s\) \['path'\]"):
        load_mixture(f)
    f.write_text("[sources.a\n")
    with pytest.raises(CamelidError, match="not valid TOML"):
        load_mixture(f)
    with pytest.raises(CamelidError, match="no such mixture"):
        load_mixture(tmp_path / "nope.toml")


# ---- the embedded corpus and the shipped mixtures --------------------------------------------------

def test_embedded_sources_are_real_text():
    bible = list(iter_embedded("kjv-bible"))
    assert len(bible) == 1189 and bible[0].startswith("Genesis 1\n\n1 In the beginning God created")
    assert bible[-1].startswith("Revelation 22")
    docs = list(iter_embedded("python-docs"))
    assert len(docs) > 50 and any("assert" in d for d in docs)
    code = next(iter_embedded("stdlib-code"))
    assert "def " in code or "import " in code


def test_shipped_mixtures_parse():
    emb = load_mixture(CONFIG_DIR / "data" / "embedded.toml")
    assert emb.to_dict() == embedded_mixture().to_dict()
    assert (CONFIG_DIR / "data" / "embedded.toml").read_text() == EMBEDDED_MIXTURE_TOML
    llama = load_mixture(CONFIG_DIR / "data" / "llama1-mixture.toml")
    table1 = {"commoncrawl": (0.67, 1.10), "c4": (0.15, 1.06), "github": (0.045, 0.64), "wikipedia": (0.045, 2.45),
              "books": (0.045, 2.23), "arxiv": (0.025, 1.06), "stackexchange": (0.02, 1.03)}
    assert {s.name: (s.weight, s.epochs) for s in llama.sources} == table1
    assert sum(llama.weights.values()) == pytest.approx(1.0)


def test_embedded_prepare_end_to_end(tmp_path_factory):
    """The default corpus through the whole pipeline, as the quickstart runs it (a few seconds)."""
    d = tmp_path_factory.mktemp("emb")
    tok = Tokenizer.train(list(iter_embedded("python-docs")), d / "tok", vocab_size=600)
    m = prepare_data(tok.model_path, d / "data", workers=2, progress=False)
    assert set(m["sources"]) == {"python-docs", "stdlib-docstrings", "stdlib-code", "kjv-bible"}
    assert m["mixture"]["name"] == "embedded"
    assert all(e["train_tokens"] > 50_000 and e["val_tokens"] > 1000 for e in m["sources"].values())
    assert sum(e["bytes"] for e in m["sources"].values()) > 5_000_000
    s = MixtureSampler(d / "data", seq_len=64)
    assert tok.decode(s.windows([0])[0].tolist())


def test_cli_prepare_info_verify(tmp_path, tok, mixture, capsys):
    f = tmp_path / "mix.toml"
    lines = ['name = "cli"']
    for name, spec in mixture["sources"].items():
        lines.append(f"[sources.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in spec.items()]
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        cli_main(["data", "prepare", "--tokenizer", tok.model_path, "--mixture", str(f), "--out", str(out),
                  "--workers", "1", "--no-progress"])
    assert e.value.code == 0 and "wiki" in capsys.readouterr().out
    for args in (["info", str(out)], ["verify", str(out)], ["sample", str(out), "-n", "1", "--seq-len", "16"]):
        with pytest.raises(SystemExit) as e:
            cli_main(["data", *args])
        assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        cli_main(["data", "info", str(tmp_path / "nothing")])
    assert e.value.code == 2 and "no manifest.json" in capsys.readouterr().err
