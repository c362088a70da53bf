"""GPT-2's BPE through tiktoken for `anytrain tokenize`: 6-7x the ids per second of `tokenizers` on one core, and
the same ids (every one of the 66K documents of the embedded corpus; a sample of each batch is checked again).
Used only for data.tokenizer.kind=gpt2 and only when tiktoken is installed (the gpt2 extra brings it)."""

from __future__ import annotations

from collections.abc import Callable

from tokenizers import Tokenizer

# GPT-2's pre-tokenisation pattern: the one `tokenizers`' ByteLevel pre-tokenizer applies.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CHECK_EVERY = 64  # one document in CHECK_EVERY is encoded by the configured tokenizer too and compared


class Mismatch(RuntimeError):
    """tiktoken and the configured tokenizer disagreed on a document: the unit is redone with the latter."""


def encoder(kind: str, eos_token: str, eos_id: int, tok: Tokenizer) -> Callable[[list[str]], list[list[int]]] | None:
    """A batch encoder giving the configured tokenizer's ids, or None where tiktoken cannot serve (other kinds)."""
    fast = tiktoken_gpt2(eos_token, eos_id) if kind == "gpt2" else None
    if fast is None:
        return None
    exact = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return checked(fast, lambda texts: [e.ids for e in exact(texts, add_special_tokens=False)])


def tiktoken_gpt2(eos_token: str, eos_id: int) -> Callable[[list[str]], list[list[int]]] | None:
    """GPT-2's BPE as a tiktoken encoding, from the same files; None without tiktoken."""
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        return None
    from ..tokenizer import gpt2_files

    encoder_json, vocab_bpe = gpt2_files()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe, encoder_json)
    enc = tiktoken.Encoding("anytrain-gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={eos_token: eos_id})  # fmt: skip
    return lambda texts: [enc.encode(t, allowed_special="all") for t in texts]  # EOS text -> EOS id, as tokenizers


def checked(
    fast: Callable[[list[str]], list[list[int]]], exact: Callable[[list[str]], list[list[int]]]
) -> Callable[[list[str]], list[list[int]]]:
    """`fast`, with one document in CHECK_EVERY of each batch (the first among them) compared to `exact`."""

    def encode(texts: list[str]) -> list[list[int]]:
        ids = fast(texts)
        if exact(texts[::CHECK_EVERY]) != ids[::CHECK_EVERY]:
            raise Mismatch("tiktoken's GPT-2 ids differ from the configured tokenizer's")
        return ids

    return encode
