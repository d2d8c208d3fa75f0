"""Export a trained run to ONNX or TorchScript for other serving stacks."""

from dien.export.export import (
    FORMATS,
    ExportResult,
    export_run,
    load_exported,
    run_exported,
    sidecar_path,
)
from dien.export.graph import INPUT_NAMES, OUTPUT_NAMES, ScoringModule, exportable_copy

__all__ = [
    "FORMATS",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "ExportResult",
    "ScoringModule",
    "export_run",
    "exportable_copy",
    "load_exported",
    "run_exported",
    "sidecar_path",
]
