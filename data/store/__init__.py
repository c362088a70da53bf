"""Token stores: a corpus tokenized once (`anytrain tokenize`), read by memory map, blended by weight and
shuffled by a pure function of the global sample position."""

from .blend import Corpus, corpora, parse_blend, uses_stores
from .build import build_store
from .format import StoreError, is_store, read_manifest, token_dtype, tokenizer_fingerprint
from .reader import TokenStore
from .sampler import Blend, permute
from .stream import StoreStream
from .tokenizer import store_tokenizer

__all__ = [
    "Blend",
    "Corpus",
    "StoreError",
    "StoreStream",
    "TokenStore",
    "build_store",
    "corpora",
    "is_store",
    "parse_blend",
    "permute",
    "read_manifest",
    "store_tokenizer",
    "token_dtype",
    "tokenizer_fingerprint",
    "uses_stores",
]
