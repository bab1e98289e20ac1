"""Typed request and response bodies at the HTTP edge (pydantic → the OpenAPI schema).

Arrays are :mod:`medplib_runtime.wire` objects: zlib-compressed bytes in base64, never JSON
lists of numbers. Limits here (lengths, ranges) are the first line of defence; the runtime's
own checks (prompt inside the slice, ...) are the second.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..wire import WIRE_DTYPES

SLICE_KEY_PATTERN = r"^s[0-9a-f]{32}$"
Dtype = Literal[WIRE_DTYPES]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EncodedArray(_Strict):
    dtype: Dtype
    shape: list[int] = Field(min_length=1, max_length=3)
    codec: Literal["zlib"]
    data: str = Field(max_length=96 * 2**20)


class PromptIn(_Strict):
    box: list[float] | None = Field(default=None, min_length=4, max_length=4, description="r0, c0, r1, c1")
    points: list[tuple[float, float, int]] = Field(default_factory=list, max_length=256,
                                                   description="(row, col, label 1 = fg / 0 = bg)")
    mask: EncodedArray | None = None


class SegmentIn(_Strict):
    slice_key: str = Field(pattern=SLICE_KEY_PATTERN)
    prompt: PromptIn
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class TurnIn(_Strict):
    question: str = Field(max_length=8000)
    answer: str = Field(max_length=8000)


class AskIn(_Strict):
    slice_key: str = Field(pattern=SLICE_KEY_PATTERN)
    question: str = Field(max_length=8000)
    region: PromptIn | None = None
    history: list[TurnIn] = Field(default_factory=list, max_length=32)
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class PrefetchIn(_Strict):
    slice_keys: list[str] = Field(max_length=32)


class SegmentOut(BaseModel):
    mask: EncodedArray
    score: float
    prompt_kind: str
    timings_ms: dict[str, float]


class SliceOut(BaseModel):
    slice_key: str
    shape: tuple[int, int]
    nbytes: int


class PartOut(BaseModel):
    name: str
    source: str
    trained: bool


class InfoOut(BaseModel):
    preset: str
    device: str
    transport: str
    versions: dict[str, str]
    parts: list[PartOut]


class HealthOut(BaseModel):
    status: Literal["ok"]
    ready: bool
    preset: str
    version: str
    auth: bool


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody
