"""Name the file behind a bad document. `datasets` reports a decode error or an odd value without saying which file
holds it; these scans find it. They read the files again, so they run only on an error path or once per run."""

from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from .sources import resolve_files, source_format

CHUNK = 1 << 20
# The sources to search: data.sources, or {index: source} for some of them (errors name data.sources[index]).
Sources = Sequence[Any] | Mapping[int, Any]


class NotText(ValueError):
    """A document whose text is neither a string nor null (a number in a jsonl file, say)."""

    def __init__(self, value: Any) -> None:
        super().__init__(f"a document's text is {_kind(value)}, not a string: make every text a string")
        self.value = value


def doc_text(example: dict) -> str | None:
    """The example's text, None when null or missing; NotText when it is something else."""
    text = example["text"]
    if text is None or isinstance(text, str):
        return text
    raise NotText(text)


@contextlib.contextmanager
def explained(sources: Sources) -> Iterator[None]:
    """Turn a decode error or a non-string text raised while reading `sources` into one line naming the file."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise decode_error(sources, e) from None
    except NotText as e:
        raise not_text_error(sources, e) from None


def _open(path: str) -> IO[bytes]:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _kind(value: Any) -> str:
    name = type(value).__name__
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({shown})"


def _items(sources: Sources) -> list[tuple[int, Any]]:
    return list(sources.items() if isinstance(sources, Mapping) else enumerate(sources))


def _paths(sources: Sources) -> list[str]:
    return [src.path for _, src in _items(sources)]


def local_sources(sources: Sources) -> Iterator[tuple[int, Any, str, list[str]]]:
    """(index, source, format, files) of every source read from local files (hub datasets cannot be scanned)."""
    for i, src in _items(sources):
        files = resolve_files(src, i)
        if files is not None:
            yield i, src, source_format(src, files, i), files


def first_bad_utf8(path: str) -> tuple[int, int, int] | None:
    """(byte offset, line, byte) of the first byte of `path` that is not UTF-8 (offsets after decompression)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    with _open(path) as f:
        while True:
            chunk = f.read(CHUNK)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                at = e.start - pending  # within this chunk; negative: in the previous chunk's tail
                bad = offset + at
                return bad, lines + chunk[: max(at, 0)].count(b"\n") + 1, (e.object[e.start])
            if not chunk:
                return None
            offset += len(chunk)
            lines += chunk.count(b"\n")


def decode_error(sources: Sources, error: UnicodeDecodeError) -> ValueError:
    for i, _, fmt, files in local_sources(sources):
        for path in files if fmt != "parquet" else []:  # parquet strings are checked by Arrow when written
            found = first_bad_utf8(path)
            if found:
                offset, line, byte = found
                return ValueError(
                    f"data.sources[{i}]: {path} is not valid UTF-8 (byte 0x{byte:02x} at offset {offset}, line "
                    f"{line}): re-encode it as UTF-8, from its real encoding (iconv -f latin1 -t utf-8 FILE > NEW) "
                    f"or dropping the bad bytes (iconv -f utf-8 -t utf-8 -c FILE > NEW)"
                )
    return ValueError(
        f"data.sources: a document is not valid UTF-8 ({error.reason}) in one of "
        f"{_paths(sources)}: re-encode the source as UTF-8"
    )


def values(path: str, fmt: str, column: str) -> Iterator[tuple[str, Any]]:
    """(where, value of `column`) for each record of a file: "line N" of JSON lines, "row N" otherwise."""
    if fmt == "json" and not _is_json_array(path):
        with _open(path) as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:  # a malformed line is the builder's to report
                    continue
                yield f"line {n}", record.get(column) if isinstance(record, dict) else None
        return
    import datasets  # the builders read json arrays, parquet and csv as the stream does

    ds = datasets.load_dataset(fmt, data_files=[path], split="train", streaming=True)
    for n, record in enumerate(ds, 1):
        yield f"row {n}", record.get(column)


def _is_json_array(path: str) -> bool:
    with _open(path) as f:
        return f.read(4096).lstrip().startswith(b"[")


def not_text_error(sources: Sources, error: NotText) -> ValueError:
    for i, src, fmt, files in local_sources(sources):
        for path in files if fmt != "text" else []:  # the text builder yields only strings
            for where, value in values(path, fmt, src.text_column):
                if value is not None and not isinstance(value, str):
                    return ValueError(
                        f"data.sources[{i}]: {path} {where}: `{src.text_column}` is {_kind(value)}, not a string: "
                        f"make it a string (or null to skip the document)"
                    )
    return ValueError(f"data.sources {_paths(sources)}: {error}")


def local_bytes(sources: Sources) -> int:
    """The size of the local sources' files (a stat each)."""
    return sum(os.path.getsize(p) for _, _, _, files in local_sources(sources) for p in files)


def null_counts(sources: Sources) -> list[tuple[int, str, dict[str, int]]]:
    """(index, text column, {file: records whose text is null or missing}) of each local source that has any."""
    out = []
    for i, src, fmt, files in local_sources(sources):
        if fmt == "text":  # lines and paragraphs are never null
            continue
        counts = {p: sum(v is None for _, v in values(p, fmt, src.text_column)) for p in files}
        counts = {p: n for p, n in counts.items() if n}
        if counts:
            out.append((i, src.text_column, counts))
    return out
