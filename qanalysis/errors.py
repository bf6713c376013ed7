"""Errors whose str() is the sentence a user reads.

The CLI prints ``error: <message>`` and exits non-zero; the dashboard shows the same
message with ``st.error``. Anything that is *not* a QAnalysisError reaching the top is
a bug in qanalysis, and keeps its traceback.
"""

from __future__ import annotations


class QAnalysisError(Exception):
    """Base class: a problem with the user's input or environment, explained in one line."""


class WorkloadError(QAnalysisError):
    """The model, its data or its metric cannot be loaded or run."""


class ConfigError(QAnalysisError):
    """A scheme or config is invalid (unknown layer, bits out of range, bad JSON...)."""


class ExportError(QAnalysisError):
    """The model cannot be exported to ONNX or quantized by ONNX Runtime."""


class OutputError(QAnalysisError):
    """An output folder or file cannot be written."""
