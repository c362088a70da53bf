"""The tokenizer of a run that reads token stores: the stores' own, checked against what is configured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from . import format as fmt
from .blend import corpora


def store_tokenizer(cfg: Any, configured: Callable[[Any], Tokenizer]) -> Tokenizer:
    """Every store must carry the same tokenizer. A configured file or GPT-2 tokenizer must be that one; the
    default (a BPE trained on the corpus) means the BPE the stores were made with, of the configured size."""
    metas = {c.path: fmt.read_manifest(c.path) for c in corpora(cfg)}
    prints = {p: m["tokenizer"]["fingerprint"] for p, m in metas.items()}
    if len(set(prints.values())) > 1:
        groups: dict[str, list[str]] = {}
        for p, f in prints.items():
            groups.setdefault(f, []).append(p)
        shown = "; ".join(f"{', '.join(ps[:3])}{' ...' if len(ps) > 3 else ''}" for ps in groups.values())
        raise fmt.StoreError(
            f"the token stores were made with {len(groups)} different tokenizers ({shown}): blend only stores "
            f"tokenized alike"
        )
    first = next(iter(metas))
    meta, fingerprint = metas[first], prints[first]
    tok = Tokenizer.from_file(str(Path(first) / fmt.TOKENIZER))
    tc, made = cfg.tokenizer, meta["tokenizer"]["config"]
    if tc.kind in ("file", "gpt2"):
        if fmt.tokenizer_fingerprint(configured(cfg)) != fingerprint:
            raise fmt.StoreError(
                f"{Path(first) / fmt.MANIFEST}: the store was tokenized with another tokenizer than data.tokenizer "
                f"(kind={tc.kind}{f', path={tc.path}' if tc.kind == 'file' else ''}): use data.tokenizer.kind=file "
                f"data.tokenizer.path={Path(first) / fmt.TOKENIZER}, or tokenize the corpus again with this tokenizer"
            )
    elif made["kind"] != "bpe" or made["vocab_size"] != tc.vocab_size or made["eos_token"] != tc.eos_token:
        raise fmt.StoreError(
            f"{Path(first) / fmt.MANIFEST}: the store was tokenized with data.tokenizer kind={made['kind']} "
            f"vocab_size={made['vocab_size']} eos_token={made['eos_token']!r}, not the configured kind=bpe "
            f"vocab_size={tc.vocab_size} eos_token={tc.eos_token!r}: set data.tokenizer.kind=file "
            f"data.tokenizer.path={Path(first) / fmt.TOKENIZER}"
        )
    if tok.token_to_id(tc.eos_token) != meta["tokenizer"]["eos_id"]:
        raise fmt.StoreError(
            f"{Path(first) / fmt.MANIFEST}: documents end with id {meta['tokenizer']['eos_id']} "
            f"({made['eos_token']!r}), not data.tokenizer.eos_token={tc.eos_token!r}: set it to {made['eos_token']!r}"
        )
    return tok
