"""The errors of weight import: each a one-line message naming the file and what was expected."""
from __future__ import annotations


class UnsafeWeightsError(ValueError):
    """A weights file asks to run code (or build arbitrary objects) when loaded."""


class WeightsFormatError(ValueError):
    """A weights file is not in the expected format, or not for the requested arch."""


class WeightsDownloadError(OSError):
    """Named weights could not be downloaded; the message says how to fetch them by hand."""


class WeightsMismatchError(ValueError):
    """Weights and model/config disagree on input format, normalization or layout."""


class NotADetectorError(WeightsFormatError):
    """A Detectron2 file holds a backbone (ImageNet weights), not a whole detector."""
