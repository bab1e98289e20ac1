"""medplib_runtime: MedPLIB on CPU or GPU, with no Qt and no napari. Imports without torch."""

from .errors import InputError, MedplibError, ModelError, RuntimeNotReady
from .schemas import (AskRequest, AskResult, Box, Point, Prompt, RoutingStats, RuntimeInfo,
                      SegmentRequest, SegmentResult, SliceRef, Turn)

__version__ = "0.1.0"
__all__ = [
    "AskRequest", "AskResult", "Box", "InputError", "MedplibError", "ModelError", "Point", "Prompt",
    "RoutingStats", "RuntimeInfo", "RuntimeNotReady", "SegmentRequest", "SegmentResult", "SliceRef",
    "Turn", "__version__",
]
