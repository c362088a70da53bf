"""Bad input is one line naming the problem, the file and the fix (a ValueError: `train` prints it, exit 2), and
what is silently dropped or repeated is logged (issue 14)."""

import json
import logging
import os
import re
import time

import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from data import DataConfig, SourceConfig, TokenizerConfig, build_stream, build_tokenizer, load_source  # noqa: E402
from models.config import ModelConfig, validate_model_config  # noqa: E402
from trainer.distributed import devices, ranks  # noqa: E402

WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex jolly sphinx".split()


def _docs(n: int, prefix: str = "doc") -> list[str]:
    return [f"{prefix} {i} " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(10)) for i in range(n)]


def _jsonl(path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(tmp_path, path, **kw) -> DataConfig:
    tc = TokenizerConfig(cache_dir=str(tmp_path / "cache"), vocab_size=300, train_docs=200)
    return DataConfig(sources=[SourceConfig(path=str(path))], tokenizer=tc, seq_len=15, val_fraction=0.1, **kw)


@pytest.fixture
def tok(tmp_path):
    """A byte-level BPE trained on a clean corpus, to read the bad ones with."""
    good = _jsonl(tmp_path / "good" / "a.jsonl", [{"text": d} for d in _docs(300)])
    return build_tokenizer(_cfg(tmp_path, good))


def _first_batches(cfg, tok, n=3, batch_size=2):
    it = iter(build_stream(cfg, tok, "train", batch_size=batch_size))
    return [next(it) for _ in range(n)]


# --- 1. UTF-8 errors name the file and the byte offset -----------------------------------------------------------
@pytest.mark.parametrize("name", ["b.txt", "b.jsonl"])
def test_invalid_utf8_names_the_file_and_offset(tmp_path, tok, name):
    folder = tmp_path / "corpus"
    folder.mkdir()
    good = (
        "\n\n".join(_docs(50)) if name.endswith(".txt") else "".join(json.dumps({"text": d}) + "\n" for d in _docs(50))
    )
    (folder / f"a{name[1:]}").write_text(good)
    head = b'{"text": "fine"}\n{"text": "caf' if name.endswith(".jsonl") else b"fine\n\ncaf"
    (folder / name).write_bytes(head + b'\xe9 au lait"}\n' if name.endswith(".jsonl") else head + b"\xe9 au lait\n")
    cfg = _cfg(tmp_path, folder)
    line = head.count(b"\n") + 1
    where = rf"{name} is not valid UTF-8 \(byte 0xe9 at offset {len(head)}, line {line}\)"
    with pytest.raises(ValueError, match=rf"data\.sources\[0\]: .*{where}: re-encode it as UTF-8.*iconv"):
        _first_batches(cfg, tok, 50)
    with pytest.raises(ValueError, match=rf"{name} is not valid UTF-8"):  # also while training the BPE on it
        build_tokenizer(_cfg(tmp_path / "other", folder))


# --- 2. a non-string text names the file, line and key -----------------------------------------------------------
def test_a_non_string_text_names_file_line_and_key(tmp_path, tok):
    rows = [{"text": d} for d in _docs(20)]
    rows[6] = {"text": 12345}
    path = _jsonl(tmp_path / "c" / "mixed.jsonl", rows)
    with pytest.raises(ValueError, match=r"mixed\.jsonl line 7: `text` is an int \(12345\), not a string"):
        _first_batches(_cfg(tmp_path, path), tok)
    with pytest.raises(ValueError, match=r"mixed\.jsonl line 7: `text`"):
        build_tokenizer(_cfg(tmp_path / "other", path))


# --- 3. a damaged BPE cache is trained again; a damaged tokenizer.json is refused ----------------------------------
def test_a_damaged_bpe_cache_is_named_and_trained_again(tmp_path, caplog):
    cfg = _cfg(tmp_path, _jsonl(tmp_path / "c" / "a.jsonl", [{"text": d} for d in _docs(300)]))
    ids = build_tokenizer(cfg).encode("the lazy dog").ids
    (cached,) = (tmp_path / "cache").glob("bpe-*.json")
    cached.write_bytes(cached.read_bytes()[:500])  # truncated, as by a full disk
    with caplog.at_level(logging.WARNING, logger="data.tokenizer"):
        again = build_tokenizer(cfg)
    assert f"tokenizer cache {cached} is damaged" in caplog.text and "training it again" in caplog.text
    assert again.encode("the lazy dog").ids == ids
    assert build_tokenizer(cfg).encode("the lazy dog").ids == ids  # the cache was rewritten whole


def test_a_tokenizer_json_with_an_id_beyond_its_vocabulary_is_refused(tmp_path, tok):
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    token = max(vocab, key=vocab.get)
    vocab[token] = 1_000_000  # one damaged id: the file loads, then training indexes past the embedding
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    cfg = _cfg(tmp_path, tmp_path / "good")
    cfg.tokenizer = TokenizerConfig(kind="file", path=str(path))
    size = tok.get_vocab_size(with_added_tokens=True)
    match = (
        rf"data\.tokenizer\.path='{path}' is damaged: token {re.escape(repr(token))} has id 1000000, but the "
        rf"vocabulary has {size} ids"
    )
    with pytest.raises(ValueError, match=match):
        build_tokenizer(cfg)


# --- 4. the BPE cache notices a changed corpus of the same name, size and mtime --------------------------------------
def test_the_bpe_cache_notices_a_same_size_change(tmp_path):
    path = tmp_path / "c" / "a.jsonl"
    _jsonl(path, [{"text": d} for d in _docs(300)])
    cfg = _cfg(tmp_path, path)
    first = build_tokenizer(cfg)
    stat = path.stat()
    text = path.read_text()
    path.write_text(text.replace("quick", "QUICK"))  # same size, other content
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime, as cp -p or rsync -t leave it
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = build_tokenizer(cfg)
    assert second.get_vocab() != first.get_vocab()
    assert len(list((tmp_path / "cache").glob("bpe-*.json"))) == 2


def test_the_bpe_cache_is_shared_by_copies_of_the_same_corpus(tmp_path, monkeypatch):
    """Another node's copy of the corpus (another path, other times) finds the tokenizer rank 0 trained instead of
    training its own: a key made of stat times alone would miss it."""
    import data.tokenizer as tokmod

    rows = [{"text": d} for d in _docs(300)]
    first = build_tokenizer(_cfg(tmp_path, _jsonl(tmp_path / "node0" / "a.jsonl", rows)))
    copy = _jsonl(tmp_path / "node1" / "a.jsonl", rows)
    os.utime(copy, ns=(1, 1))
    monkeypatch.setattr(tokmod, "train_bpe", lambda cfg: pytest.fail("the copy should have found the cache"))
    assert build_tokenizer(_cfg(tmp_path, copy)).get_vocab() == first.get_vocab()


# --- 5. model shape ----------------------------------------------------------------------------------------------
def test_zero_kv_heads_is_refused():
    with pytest.raises(ValueError, match=r"model\.n_kv_heads must be positive or null"):
        validate_model_config(ModelConfig(n_heads=4, n_kv_heads=0))


# --- 6, 7. launcher variables --------------------------------------------------------------------------------------
def test_world_size_without_rank_is_refused():
    with pytest.raises(ValueError, match=r"WORLD_SIZE=4 is set but RANK is not.*torchrun"):
        ranks.discover_ranks({"WORLD_SIZE": "4"})
    assert ranks.discover_ranks({"WORLD_SIZE": "1"}).world_size == 1  # a world of one is what runs anyway


@pytest.mark.parametrize("port", ["abc", "70000", "0", "29500.5"])
def test_a_bad_master_port_is_one_line(port):
    job = ranks.Ranks(0, 0, 2, "torchrun")
    with pytest.raises(RuntimeError, match=rf"MASTER_PORT={port!r} is not a TCP port: set it to an integer in"):
        ranks.rendezvous_address(job, {"MASTER_ADDR": "node7", "MASTER_PORT": port})


# --- 8. a device this machine does not have -------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_user_error():
    with pytest.raises(ValueError, match=r"trainer\.device='cuda'.*set trainer\.device=auto"):
        devices.resolve_device("cuda")


# --- 9. a hub dataset offline --------------------------------------------------------------------------------------
def test_an_unreachable_hub_dataset_is_one_line_quickly():
    start = time.monotonic()
    with pytest.raises(
        ValueError, match=r"'nobody-here/no-such-corpus'.*cannot be reached.*HF_HUB_OFFLINE.*hf download"
    ):
        load_source(SourceConfig(path="nobody-here/no-such-corpus"))
    assert time.monotonic() - start < 15


# --- 10, 11. what is dropped or repeated is logged --------------------------------------------------------------
def test_null_texts_are_counted_per_source_and_file(tmp_path, tok, caplog):
    rows = [{"text": d} for d in _docs(40)]
    for i in (3, 9, 30):
        rows[i] = {"text": None}
    rows[12] = {"other": "no text key"}
    path = _jsonl(tmp_path / "n" / "nulls.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="data.loader"):
        _first_batches(_cfg(tmp_path, path), tok, n=60)  # past the end of the first pass
    warnings = [r.getMessage() for r in caplog.records if "null" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "data.sources[0]: 4 documents have no `text` (null or missing) and are skipped" in warnings[0]
    assert f"{path}: 4" in warnings[0]


def test_a_large_corpus_is_not_scanned_for_its_null_texts(tmp_path, tok, caplog, monkeypatch):
    import data.loader as loader

    rows = [{"text": d} for d in _docs(40)]
    rows[3] = {"text": None}
    path = _jsonl(tmp_path / "n" / "nulls.jsonl", rows)
    monkeypatch.setattr(loader, "NULL_SCAN_BYTES", 10)  # as if the corpus were larger than the scan limit
    monkeypatch.setattr(loader, "null_counts", lambda s: pytest.fail("a large corpus must not be rescanned"))
    with caplog.at_level(logging.WARNING, logger="data.loader"):
        _first_batches(_cfg(tmp_path, path), tok, n=60)
    assert "1 documents of one pass over the train split have no text (null) and are skipped" in caplog.text


def test_a_train_split_smaller_than_a_batch_warns_at_the_first_wrap(tmp_path, tok, caplog):
    path = _jsonl(tmp_path / "t" / "tiny.jsonl", [{"text": "the quick brown fox"}, {"text": "jumps over"}])
    cfg = _cfg(tmp_path, path)
    cfg.val_fraction = 1e-9  # both documents train
    with caplog.at_level(logging.WARNING, logger="data.loader"):
        _first_batches(cfg, tok, n=5, batch_size=4)
    warned = [r.getMessage() for r in caplog.records if "fewer than one batch" in r.getMessage()]
    assert len(warned) == 1 and "add data" in warned[0], caplog.text
