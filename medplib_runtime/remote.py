"""RemoteRuntime: the Runtime protocol over HTTP to `medplib serve` (httpx + numpy; no torch).

The volume stays on the client. What the server needs is a slice and its intensity window (the
window is computed over the whole volume here, exactly as LocalRuntime does), so a slice is
uploaded the first time it is used, under a content key both sides compute, and embedded once.
Idempotent calls are retried with backoff on connection failures and 503 busy; a slice the
server has forgotten (restart, eviction) is uploaded again transparently. Every failure is a
one-line :class:`RemoteError`; a result is returned only when it arrived whole.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable

import httpx
import numpy as np

from .errors import InputError, MedplibError, RemoteError
from .image_store import ImageStore, StoredImage
from .schemas import AskRequest, AskResult, RuntimeInfo, SegmentRequest, SegmentResult, SliceRef, validate_prompt
from .validation import check_question, slice_shape
from .wire import (ask_result_from_wire, history_to_wire, info_from_wire, pack_bytes, prompt_to_wire,
                   segment_result_from_wire, slice_key)

TOKEN_ENV = "MEDPLIB_TOKEN"
BACKOFF_S = (0.25, 0.5, 1.0, 2.0)


class RemoteRuntime:
    """``url`` of a `medplib serve`; ``token`` (default: $MEDPLIB_TOKEN) if the server wants one."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 300.0, connect_timeout_s: float = 5.0,
                 retries: int = 3, max_images: int = 8) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"remote URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        headers = {"X-Medplib-Client": uuid.uuid4().hex}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers,
                                  timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))
        self._retries = retries
        self.images = ImageStore(max_images=max_images, on_forget=self._forget_slice_keys)
        self._slice_keys: dict[tuple[str, int, int], str] = {}
        self._on_server: set[str] = set()
        self._lock = threading.RLock()
        self._hints: queue.Queue = queue.Queue(maxsize=1)
        self._prefetcher: threading.Thread | None = None
        self._closed = False

    # -- Runtime protocol ---------------------------------------------------------------------
    def info(self) -> RuntimeInfo:
        return info_from_wire(self._json("GET", "/v1/info"), transport=f"remote {self.url}")

    def health(self) -> dict:
        return self._json("GET", "/health")

    def set_image(self, image: np.ndarray, *, modality: str = "auto", spacing: tuple[float, ...] | None = None) -> str:
        return self.images.put(image, modality=modality, spacing=spacing)  # the same window LocalRuntime computes

    def prefetch(self, image_key: str, slice: SliceRef, *, radius: int = 2) -> None:
        img = self._image(image_key)
        ref = img.slice_ref(slice)
        n = img.array.shape[ref.axis]
        order = [ref.index] + [i for d in range(1, radius + 1) for i in (ref.index + d, ref.index - d)]
        refs = [SliceRef(ref.axis, i) for i in order if 0 <= i < n]
        try:  # only the newest hint matters: replace a pending one
            self._hints.get_nowait()
        except queue.Empty:
            pass
        self._hints.put_nowait((image_key, refs))
        self._ensure_prefetcher()

    def segment(self, request: SegmentRequest) -> SegmentResult:
        t0 = time.perf_counter()
        img = self._image(request.image_key)
        ref = img.slice_ref(request.slice)
        shape = slice_shape(img.array.shape, ref.axis)
        validate_prompt(request.prompt, shape)
        body = {"prompt": prompt_to_wire(request.prompt), "threshold": request.threshold}
        out = self._with_slice(request.image_key, ref, lambda key: self._json("POST", "/v1/segment",
                                                                              json={**body, "slice_key": key}))
        result = segment_result_from_wire(out)
        if result.mask.shape != shape:
            raise RemoteError(f"server sent a {result.mask.shape} mask for a {shape} slice", code="protocol")
        timings = dict(result.timings_ms)
        timings["client_total"] = (time.perf_counter() - t0) * 1e3
        return SegmentResult(result.mask, result.score, result.prompt_kind, timings)

    def ask(self, request: AskRequest, *, on_token: Callable[[str], None] | None = None) -> AskResult:
        """Streams the answer: ``on_token`` gets each token's text as the server generates it."""
        check_question(request.question, region=request.region is not None, history=request.history)
        img = self._image(request.image_key)
        ref = img.slice_ref(request.slice)
        shape = slice_shape(img.array.shape, ref.axis)
        if request.region is not None:
            validate_prompt(request.region, shape)
        body = {"question": request.question, "region": None if request.region is None else prompt_to_wire(request.region),
                "history": history_to_wire(request.history), "max_new_tokens": request.max_new_tokens,
                "threshold": request.threshold}
        result = self._with_slice(request.image_key, ref,
                                  lambda key: self._stream_ask({**body, "slice_key": key}, on_token))
        if any(m.shape != shape for m in result.masks):
            raise RemoteError("server sent a mask of the wrong shape", code="protocol")
        return result

    def close(self) -> None:
        self._closed = True
        try:
            self._hints.put_nowait(None)
        except queue.Full:
            pass
        if self._prefetcher is not None:
            self._prefetcher.join(timeout=10)
        self._http.close()

    # -- slices --------------------------------------------------------------------------------
    def _image(self, key: str) -> StoredImage:
        if self._closed:
            raise RemoteError("the remote runtime was closed", code="closed")
        return self.images.get(key)

    def _forget_slice_keys(self, key: str) -> None:
        with self._lock:
            for k in [k for k in self._slice_keys if k[0] == key]:
                del self._slice_keys[k]

    def _with_slice(self, key: str, ref: SliceRef, call):
        """``call(slice_key)`` with the slice on the server; uploads again once if the server forgot it."""
        skey = self._upload(key, ref)
        try:
            return call(skey)
        except _UnknownSlice:
            with self._lock:
                self._on_server.discard(skey)
            return call(self._upload(key, ref))

    def _upload(self, key: str, ref: SliceRef) -> str:
        img = self._image(key)
        plane = np.ascontiguousarray(np.take(img.array, ref.index, axis=ref.axis))
        w = img.window
        with self._lock:
            skey = self._slice_keys.get((key, ref.axis, ref.index))
        if skey is None:
            skey = slice_key(plane, lo=w.lo, hi=w.hi, modality=w.modality)
            with self._lock:
                self._slice_keys[(key, ref.axis, ref.index)] = skey
        if skey in self._on_server:
            return skey
        try:
            self._json("GET", f"/v1/slices/{skey}")  # another session may have sent it already
        except _UnknownSlice:
            params = {"dtype": plane.dtype.name, "rows": plane.shape[0], "cols": plane.shape[1],
                      "lo": repr(w.lo), "hi": repr(w.hi), "modality": w.modality}
            if plane.ndim == 3:  # RGB; left out for grey, so an older server still takes grey slices
                params["channels"] = plane.shape[2]
            out = self._json("PUT", "/v1/slices", params=params, content=pack_bytes(plane),
                             headers={"Content-Type": "application/octet-stream"})
            if out.get("slice_key") != skey:
                raise RemoteError("server computed a different slice key: client and server versions differ",
                                  code="protocol")
        with self._lock:
            self._on_server.add(skey)
        return skey

    # -- prefetch ------------------------------------------------------------------------------
    def _ensure_prefetcher(self) -> None:
        with self._lock:
            if self._prefetcher is None or not self._prefetcher.is_alive():
                self._prefetcher = threading.Thread(target=self._prefetch_loop, name="medplib-remote-prefetch",
                                                    daemon=True)
                self._prefetcher.start()

    def _prefetch_loop(self) -> None:
        while not self._closed:
            hint = self._hints.get()
            if hint is None:
                return
            key, refs = hint
            try:
                keys = [self._upload(key, ref) for ref in refs]
                self._json("POST", "/v1/prefetch", json={"slice_keys": keys}, retries=0)
            except (MedplibError, _UnknownSlice):
                pass  # a failed hint only costs speed

    # -- HTTP ----------------------------------------------------------------------------------
    def _json(self, method: str, path: str, *, retries: int | None = None, **kwargs) -> dict:
        response = self._send(method, path, retries=retries, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise RemoteError(f"server sent a reply that is not JSON ({path})", code="protocol") from None

    def _send(self, method: str, path: str, *, retries: int | None = None, **kwargs) -> httpx.Response:
        """One call; retried on connection failures and 503 busy (all our calls are idempotent)."""
        attempts = (self._retries if retries is None else retries) + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                error = _transport_error(exc, self.url)
                if last or error.code not in ("unreachable", "lost"):
                    raise error from None
            else:
                if response.status_code == 503 and not last:
                    time.sleep(_retry_after(response, BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]))
                    continue
                _raise_for(response)
                return response
            time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
        raise AssertionError("unreachable")

    def _stream_ask(self, body: dict, on_token) -> AskResult:
        """POST /v1/ask and read its NDJSON lines; retried only before the first token arrived."""
        attempts = self._retries + 1
        for attempt in range(attempts):
            got_token = False
            try:
                with self._http.stream("POST", "/v1/ask", json=body) as response:
                    if response.status_code == 503 and attempt < attempts - 1:
                        time.sleep(_retry_after(response, BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]))
                        continue
                    if response.status_code >= 400:
                        response.read()
                        _raise_for(response)
                    for line in response.iter_lines():
                        if not line.strip():
                            continue
                        item = _parse_line(line)
                        if item["type"] == "token":
                            got_token = True
                            if on_token is not None:
                                on_token(item["text"])
                        elif item["type"] == "result":
                            return ask_result_from_wire(item["result"])
                        elif item["type"] == "error":
                            if item.get("code") == "unknown_slice":
                                raise _UnknownSlice()
                            if item.get("code") == "bad_input":
                                raise InputError(item.get("message", "bad input"))
                            raise RemoteError(f"server: {item.get('message', 'error')}", code=item.get("code", "server"))
                raise RemoteError("connection lost during the answer; nothing was kept", code="lost")
            except httpx.HTTPError as exc:
                error = _transport_error(exc, self.url)
                if got_token and error.code in ("lost", "unreachable"):
                    raise RemoteError("connection lost during the answer; nothing was kept", code="lost") from None
                if attempt == attempts - 1 or error.code not in ("unreachable", "lost"):
                    raise error from None
                time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
        raise RemoteError("server stayed busy; try again later", code="busy")


class _UnknownSlice(Exception):
    """The server does not hold that slice (any more): upload it and try again."""


def _parse_line(line: str) -> dict:
    try:
        item = json.loads(line)
    except ValueError:
        raise RemoteError("server sent a malformed stream line", code="protocol") from None
    if not isinstance(item, dict) or item.get("type") not in ("token", "result", "error"):
        raise RemoteError("server sent an unexpected stream line", code="protocol")
    return item


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return min(float(response.headers.get("retry-after", default)), 5.0)
    except ValueError:
        return default


def _transport_error(exc: httpx.HTTPError, url: str) -> RemoteError:
    if isinstance(exc, httpx.ConnectError):
        return RemoteError(f"cannot reach the medplib server at {url} (connection refused or host down)",
                           code="unreachable")
    if isinstance(exc, httpx.ConnectTimeout):
        return RemoteError(f"cannot reach the medplib server at {url} (connect timed out)", code="unreachable")
    if isinstance(exc, httpx.TimeoutException):
        return RemoteError(f"the medplib server at {url} did not answer in time", code="timeout")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return RemoteError(f"connection to the medplib server at {url} was lost mid-request", code="lost")
    return RemoteError(f"request to the medplib server at {url} failed: {type(exc).__name__}", code="unreachable")


def _raise_for(response: httpx.Response) -> None:
    """One-line errors from the server's ``{"error": {"code", "message"}}`` bodies."""
    status = response.status_code
    if status < 400:
        return
    try:
        err = response.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "server", (response.text.strip().splitlines() or [response.reason_phrase])[0][:200]
    if status == 404 and code == "unknown_slice":
        raise _UnknownSlice()
    if status in (400, 422):
        raise InputError(message)
    if status == 401:
        raise RemoteError(f"the medplib server refused the token ({message}): check --token / {TOKEN_ENV}",
                          code="auth")
    if status == 413:
        raise RemoteError(f"request too large for the server: {message}", code="too_large")
    if status == 503:
        raise RemoteError(f"server busy: {message}", code="busy")
    if status == 504:
        raise RemoteError(f"server timed out: {message}", code="timeout")
    raise RemoteError(f"server error {status}: {message}", code="server")
