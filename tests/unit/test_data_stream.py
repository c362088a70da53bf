"""TokenStream: shapes, right documents per split, val ends, exact resume (double, across epochs, mixed)."""

import io
import json
import os
from collections import Counter

import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"

from data import DataConfig, SourceConfig, TokenizerConfig, build_stream, build_tokenizer, is_val  # noqa: E402


def _corpus(path, prefix, n):
    docs = [f"{prefix} document {i}: " + " ".join(f"w{(i * 7 + k) % 50}" for k in range(i % 9 + 1)) for i in range(n)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return docs


@pytest.fixture
def setup(tmp_path):
    docs = _corpus(tmp_path / "a.jsonl", "alpha", 120)
    cfg = DataConfig(
        sources=[SourceConfig(path=str(tmp_path / "a.jsonl"))],
        tokenizer=TokenizerConfig(vocab_size=300, train_docs=100, cache_dir=str(tmp_path / "cache")),
        seq_len=15,
        val_fraction=0.2,
    )
    return cfg, build_tokenizer(cfg), docs


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def _docs(ids: list[int], eos: int) -> Counter:
    """The complete documents (each ended by EOS) in a token list, as a multiset."""
    out, cur = Counter(), []
    for t in ids:
        if t == eos:
            out[tuple(cur)] += 1
            cur = []
        else:
            cur.append(t)
    return out


def _expected_tokens(tok, docs, eos):
    return [t for d in docs for t in tok.encode(d, add_special_tokens=False).ids + [eos]]


def test_batches_shape_dtype_and_attributes(setup):
    cfg, tok, _ = setup
    s = build_stream(cfg, tok, "train", batch_size=4)
    b = _take(s, 1)[0]
    assert b.shape == (4, 16) and b.dtype == torch.int64
    assert s.seq_len == 15 and s.batch_size == 4
    assert s.eos_id == tok.token_to_id("<|endoftext|>") and s.vocab_size == tok.get_vocab_size()
    assert int(b.max()) < s.vocab_size


@pytest.mark.parametrize("split", ["train", "val"])
def test_each_split_sees_exactly_its_documents(setup, split):
    cfg, tok, docs = setup
    cfg.seq_len = 1  # windows of 2 tokens: at most one token is left unpacked
    mine = [d for d in docs if is_val(d, cfg.val_fraction) == (split == "val")]
    assert 0 < len(mine) < len(docs)
    eos = tok.token_to_id("<|endoftext|>")
    expected = _expected_tokens(tok, mine, eos)
    shuffled = build_stream(cfg, tok, split, batch_size=1)  # the default shuffle: the same documents, once each
    got = [t for b in _take(shuffled, len(expected) // 2) for t in b.flatten().tolist()]
    assert _docs(got, eos) <= _docs(expected, eos) and _docs(got, eos).total() >= _docs(expected, eos).total() - 1
    assert (got != expected[: len(got)]) == (split == "train")  # only train is shuffled
    cfg.shuffle_docs = 0  # file order
    s = build_stream(cfg, tok, split, batch_size=1)
    got = [t for b in _take(s, len(expected) // 2) for t in b.flatten().tolist()]
    assert got == expected[: len(got)] and len(expected) - len(got) <= 1
    if split == "val":
        assert list(s) == []  # one pass, then the stream ends (and stays ended)
    else:
        assert _take(s, 3)  # train goes on into the next epoch


def test_val_pass_ends_and_drops_incomplete_batch(setup):
    cfg, tok, docs = setup
    val = [d for d in docs if is_val(d, cfg.val_fraction)]
    n_windows = len(_expected_tokens(tok, val, 0)) // (cfg.seq_len + 1)
    batches = list(build_stream(cfg, tok, "val", batch_size=3))
    assert len(batches) == n_windows // 3 and all(b.shape == (3, 16) for b in batches)


def _roundtrip(state):
    # The state must survive a checkpoint: plain JSON, and torch.save/torch.load(weights_only=True).
    state = json.loads(json.dumps(state))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _check_resume(cfg, tok, batch_size, cuts, total):
    ref = _take(build_stream(cfg, tok, "train", batch_size), total)
    got, state = [], None
    for cut in [*cuts, total]:
        s = build_stream(cfg, tok, "train", batch_size)
        if state is not None:
            s.load_state_dict(_roundtrip(state))
        got += _take(s, cut - len(got))
        state = s.state_dict()
    assert len(got) == total
    for i, (a, b) in enumerate(zip(ref, got, strict=True)):
        assert torch.equal(a, b), f"batch {i} differs after resume"
    return s


def test_exact_resume_twice_and_across_epochs(setup):
    cfg, tok, docs = setup
    windows_per_epoch = len(_expected_tokens(tok, docs, 0)) * 0.8 / 16
    total = int(windows_per_epoch / 2 * 2.5)  # 2.5 epochs at batch_size 2
    s = _check_resume(cfg, tok, 2, cuts=[7, 12, int(windows_per_epoch / 2) + 1], total=total)
    assert s.state_dict()["streams"]["0"]["epoch"] == 2


def test_exact_resume_with_small_pulls(setup):
    # Chunks of 3 documents: the state is saved while tokenised documents still wait in `pending`.
    cfg, tok, _ = setup
    import data.loader as loader

    orig = loader.TokenStream.__init__

    def small(self, *a, **kw):
        orig(self, *a, **kw, pull_docs=3)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader.TokenStream, "__init__", small)
        s = build_stream(cfg, tok, "train", 1)
        _take(s, 1)
        assert s.state_dict()["streams"]["0"]["pending"], "test needs pending documents at save time"
        _check_resume(cfg, tok, 1, cuts=[1, 4, 9], total=30)


def test_exact_resume_with_two_mixed_sources(setup, tmp_path):
    cfg, tok, _ = setup
    _corpus(tmp_path / "b.jsonl", "beta", 60)
    cfg.sources.append(SourceConfig(path=str(tmp_path / "b.jsonl"), weight=0.5))
    _check_resume(cfg, tok, 2, cuts=[5, 11], total=60)


def test_ranks_get_different_batches_and_state_checks_split(setup):
    cfg, tok, _ = setup
    b0 = _take(build_stream(cfg, tok, "train", 2, rank=0, world_size=2), 3)
    b1 = _take(build_stream(cfg, tok, "train", 2, rank=1, world_size=2), 3)
    assert not any(torch.equal(a, b) for a, b in zip(b0, b1, strict=True))
    state = build_stream(cfg, tok, "train", 2).state_dict()
    with pytest.raises(ValueError, match="split"):
        build_stream(cfg, tok, "val", 2).load_state_dict(state)
    with pytest.raises(ValueError, match="rank"):
        build_stream(cfg, tok, "train", 2, rank=2, world_size=2)


def test_empty_train_split_raises_instead_of_spinning(setup, tmp_path):
    cfg, tok, _ = setup
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "   "}) + "\n")
    cfg.sources = [SourceConfig(path=str(tmp_path / "blank.jsonl"))]
    with pytest.raises(ValueError, match="no documents"):
        _take(build_stream(cfg, tok, "train", 1), 1)
