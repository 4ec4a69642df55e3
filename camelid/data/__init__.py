"""Data: sources, the embedded corpus, cleaning, token shards (`prepare_data`) and the mixture sampler.

    from camelid.data import prepare_data, MixtureSampler
    manifest = prepare_data("tok/tokenizer.model", "data/embedded")       # the embedded default corpus
    sampler = MixtureSampler("data/embedded", seq_len=256, seed=0)
    batch = sampler.next_batch(8)                                          # LongTensor [8, 257]

Names are imported lazily, so worker processes and `camelid --help` do not pay for torch.
"""

from __future__ import annotations

from camelid.lazy import lazy_exports

_LAZY = {
    "prepare_data": "camelid.data.prepare",
    "read_manifest": "camelid.data.prepare",
    "verify": "camelid.data.prepare",
    "MixtureSampler": "camelid.data.sampler",
    "Mixture": "camelid.data.mixture",
    "load_mixture": "camelid.data.mixture",
    "embedded_mixture": "camelid.data.mixture",
    "SourceSpec": "camelid.data.sources",
    "iter_documents": "camelid.data.sources",
    "iter_embedded": "camelid.data.corpus",
}

__all__ = list(_LAZY)


__getattr__ = lazy_exports(__name__, _LAZY)
