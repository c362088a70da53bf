"""Reading a DCP checkpoint without running anything it contains.

torch's FileSystemReader unpickles `.metadata` with `pickle.load`, and DefaultLoadPlanner reads every non-tensor item
(the optimizer's param_groups values) with `torch.load(weights_only=False)`: a crafted file runs code. Here the
metadata goes through an unpickler that knows only the types DCP writes there, and a non-tensor item must pass
torch's weights-only unpickler (primitives, containers, tensors) before the planner sees it.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader


class UnsafeCheckpoint(pickle.UnpicklingError):
    """A checkpoint file asked to build something that is not plain checkpoint data."""


# (module, name) pairs DCP's metadata is made of; torch dtypes are allowed by type below.
_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # returns torch.strided & co. by name
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib._local", "PosixPath"),
    ("pathlib._local", "PurePosixPath"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}
_METADATA_CLASSES = {
    "Metadata",
    "MetadataIndex",
    "StorageMeta",
    "TensorProperties",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "_MEM_FORMAT_ENCODING",
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED or (module == dcp_metadata.__name__ and name in _METADATA_CLASSES):
            return super().find_class(module, name)
        raise UnsafeCheckpoint(f"it refers to {module}.{name}, which checkpoint metadata never holds")


class SafeReader(FileSystemReader):
    """FileSystemReader with `.metadata` read by the restricted unpickler. `refused` keeps the refusal: DCP
    re-raises it folded into a message of its own."""

    refused: UnsafeCheckpoint | None = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if not isinstance(metadata, dcp_metadata.Metadata):
                raise UnsafeCheckpoint(f"its .metadata holds a {type(metadata).__name__}, not DCP metadata")
        except UnsafeCheckpoint as e:
            self.refused = self.refused or e
            raise
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor items must first load with weights_only=True."""

    refused: UnsafeCheckpoint | None = None

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            # torch's own words for what it met, e.g. "unsupported GLOBAL posix.system whose module posix is blocked"
            found = re.search(r"(?i)unsupported [^\n]*", str(e))
            why = found.group(0).rstrip(".") if found else str(e).strip().splitlines()[-1]
            self.refused = UnsafeCheckpoint(f"its item {read_item.dest_index.fqn} is not plain data ({why})")
            raise self.refused from None
        value.seek(0)
        super().load_bytes(read_item, value)


class _QuietDCP(logging.Filter):
    """DCP logs its fallbacks, with tracebacks, on the root logger: the caller reports the failure in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torch/distributed/checkpoint" not in record.pathname.replace("\\", "/")


def safe_load(state: dict[str, Any], path: str, no_dist: bool) -> None:
    """dcp.load into `state` with the restricted reader and planner; a refusal is raised as UnsafeCheckpoint."""
    reader, planner, quiet = SafeReader(path), SafePlanner(), _QuietDCP()
    logging.getLogger().addFilter(quiet)
    try:
        dcp.load(state, storage_reader=reader, planner=planner, no_dist=no_dist)
    except BaseException:
        refused = reader.refused or planner.refused
        if refused is not None:
            raise refused from None
        raise
    finally:
        logging.getLogger().removeFilter(quiet)
