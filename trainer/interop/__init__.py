"""Checkpoints in other formats: Hugging Face export and import, and one consolidated safetensors file."""

from .common import ExportError
from .consolidate import consolidate, read_consolidated_metadata
from .huggingface import export_hf, import_hf, read_hf_weights

__all__ = ["ExportError", "consolidate", "export_hf", "import_hf", "read_consolidated_metadata", "read_hf_weights"]
