"""The FastAPI app behind `medplib serve`, built by :func:`create_app` around one runtime.

Every model call goes through :meth:`_Service.call`: admission (a bounded queue → 503 when
full), one model lock (requests never interleave inside the model), and a deadline (→ 504).
Admission happens in the endpoint, after FastAPI has read the whole body: a slow or stalled
upload never holds a queue slot. Errors leave as ``{"error": {"code", "message"}}`` with one
line and no traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import InputError, MedplibError, UnknownImage
from ..imaging.windowing import IntensityWindow
from ..schemas import AskRequest, SegmentRequest, SliceRef, Turn, validate_prompt
from ..validation import check_question
from ..wire import ask_result_to_wire, info_to_wire, prompt_from_wire, segment_result_to_wire
from .config import ServerConfig
from .guards import Admission, BodySizeLimit, LoopbackHostOnly, TokenAuth
from .models import (AskIn, ErrorOut, HealthOut, InfoOut, PrefetchIn, PromptIn, SLICE_KEY_PATTERN, SegmentIn,
                     SegmentOut, SliceOut)
from .slice_store import ClientId, SliceStore, StoredSlice
from .uploads import TooLarge, check_size, decode_slice

log = logging.getLogger("medplib.server")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ERRORS = {400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 413: {"model": ErrorOut},
           421: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}, 504: {"model": ErrorOut}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class _Stop(Exception):
    """Raised from the token callback to end a generation (client gone or deadline passed)."""


@dataclass
class _Service:
    config: ServerConfig
    runtime: object
    store: SliceStore
    admission: Admission
    executor: ThreadPoolExecutor
    model_lock: threading.Lock
    uploads: ThreadPoolExecutor  # decodes slices; few threads, so few planes are being built at once

    async def call(self, fn):
        """Run ``fn`` on a model thread under the lock, within the request deadline."""
        if not self.admission.try_enter():
            raise _busy(self.config)
        deadline = time.monotonic() + self.config.request_timeout_s

        def body():
            try:
                if not self.model_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise _timeout(self.config)
                try:
                    return fn()
                finally:
                    self.model_lock.release()
            finally:
                self.admission.leave()

        future = asyncio.get_running_loop().run_in_executor(self.executor, body)
        try:  # on timeout the thread finishes in the background; its result is dropped
            return await asyncio.wait_for(asyncio.shield(future), timeout=self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise _timeout(self.config) from None

    def stored(self, client: ClientId, key: str) -> StoredSlice:
        stored = self.store.touch(client, key)
        if stored is None:
            raise ApiError(404, "unknown_slice", f"slice {key[:13]}… is not on the server: upload it again")
        return stored


def _busy(config: ServerConfig) -> ApiError:
    return ApiError(503, "busy", f"server busy: {config.max_queue} requests already queued; retry shortly",
                    {"Retry-After": "1"})


def _timeout(config: ServerConfig) -> ApiError:
    return ApiError(504, "timeout", f"request took longer than the server's {config.request_timeout_s:g} s limit")


def _client_id(request: Request) -> ClientId:
    """The peer address (what TCP proves) plus the self-declared name, which only splits that
    address's share: see slice_store.py."""
    given = request.headers.get("x-medplib-client", "")
    host = request.client.host if request.client else "unknown"
    return ClientId(host, given if _CLIENT_ID.match(given) else "")


def _prompt(obj: PromptIn, shape: tuple[int, int]):
    prompt = prompt_from_wire(obj.model_dump())
    validate_prompt(prompt, shape)
    return prompt


def create_app(config: ServerConfig, *, runtime=None) -> FastAPI:
    """The app for ``config``. ``runtime`` (default: a new LocalRuntime) must already be loaded
    as far as ``config.preload`` asks; the app closes it at shutdown."""
    if runtime is None:
        from ..local import LocalRuntime

        runtime = LocalRuntime(config.preset, device=config.device, cache_mb=config.embedding_cache_mb,
                               glue=config.glue, max_images=1 << 30,  # the slice store decides what to forget
                               **config.runtime_weights())
    store = SliceStore(per_client_bytes=int(config.client_cache_mb * 2**20),
                       total_bytes=int(config.total_cache_mb * 2**20), forget=runtime.forget)
    service = _Service(config, runtime, store, Admission(config.max_queue),
                       ThreadPoolExecutor(max_workers=config.max_queue + 1, thread_name_prefix="medplib-model"),
                       threading.Lock(), ThreadPoolExecutor(max_workers=2, thread_name_prefix="medplib-upload"))

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.executor.shutdown(wait=False, cancel_futures=True)
        service.uploads.shutdown(wait=False, cancel_futures=True)
        runtime.close()

    app = FastAPI(title="medplib", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/v1/openapi.json", lifespan=lifespan,
                  description="MedPLIB runtime over HTTP: the same Runtime interface as the in-process one.")
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=int(config.max_body_mb * 2**20),
                       max_inflight_bytes=int(config.max_inflight_body_mb * 2**20))
    app.add_middleware(TokenAuth, token=config.token)
    if config.token is None:  # added last = runs first
        app.add_middleware(LoopbackHostOnly)
    _install_error_handlers(app)

    @app.get("/health", response_model=HealthOut)
    def health() -> HealthOut:
        return HealthOut(status="ok", ready=True, preset=config.preset, version=__version__,
                         auth=config.token is not None)

    @app.get("/v1/info", response_model=InfoOut, responses=_ERRORS)
    def info() -> dict:
        out = info_to_wire(runtime.info())
        out["transport"] = "server"
        return out

    @app.put("/v1/slices", response_model=SliceOut, responses=_ERRORS, openapi_extra={"requestBody": {
        "required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the slice's raw little-endian bytes, zlib-compressed"}})
    async def put_slice(request: Request, dtype: str = Query(max_length=16), rows: int = Query(ge=2, le=16384),
                        cols: int = Query(ge=2, le=16384), lo: float = Query(allow_inf_nan=False),
                        hi: float = Query(allow_inf_nan=False),
                        modality: Literal["CT", "MR", "other", "RGB"] = Query(),
                        channels: int = Query(1, ge=1, le=3)) -> SliceOut:  # 3: RGB (rows, cols, 3); 2: refused
        if not hi > lo:
            raise InputError(f"window [{lo:g}, {hi:g}] is empty: hi must be above lo")
        # before a byte of the body is read: what it would cost once decoded (a zlib bomb stops here)
        if (channels == 3) != (modality == "RGB"):  # an RGB slice is windowed min-max, a grey one is not
            raise InputError(f"a {channels}-channel slice cannot have a {modality} window")
        check_size(dtype, rows, cols, max_pixels=config.max_slice_pixels, max_bytes=store.per_client_bytes,
                   channels=channels)
        body = await request.body()
        client = _client_id(request)

        def register() -> SliceOut:
            decoded = decode_slice(body, dtype=dtype, rows=rows, cols=cols, lo=lo, hi=hi, modality=modality,
                                   channels=channels)
            own = runtime.set_image(decoded.plane, window=IntensityWindow(float(lo), float(hi), modality))
            nbytes = int(decoded.plane.nbytes)
            store.add(client, decoded.key, StoredSlice((rows, cols), nbytes, own))
            return SliceOut(slice_key=decoded.key, shape=(rows, cols), nbytes=nbytes)

        return await asyncio.get_running_loop().run_in_executor(service.uploads, register)

    @app.get("/v1/slices/{slice_key}", response_model=SliceOut, responses=_ERRORS)
    def get_slice(request: Request, slice_key: str) -> SliceOut:
        if not re.match(SLICE_KEY_PATTERN, slice_key):
            raise InputError("slice key must be 's' followed by 32 hex digits")
        stored = service.stored(_client_id(request), slice_key)
        return SliceOut(slice_key=slice_key, shape=stored.shape, nbytes=stored.nbytes)

    @app.post("/v1/segment", response_model=SegmentOut, responses=_ERRORS)
    async def segment(body: SegmentIn, request: Request) -> dict:
        stored = service.stored(_client_id(request), body.slice_key)
        prompt = _prompt(body.prompt, stored.shape)
        req = SegmentRequest(image_key=stored.runtime_key, slice=SliceRef(0, 0), prompt=prompt,
                             threshold=body.threshold)
        result = await service.call(lambda: runtime.segment(req))
        return segment_result_to_wire(result)

    @app.post("/v1/prefetch", status_code=202, responses=_ERRORS)
    def prefetch(body: PrefetchIn, request: Request) -> dict:
        client = _client_id(request)
        known = [s for k in body.slice_keys if re.match(SLICE_KEY_PATTERN, k) and (s := store.touch(client, k))]
        for stored in known:
            runtime.prefetch(stored.runtime_key, SliceRef(0, 0), radius=0)
        return {"queued": len(known)}

    @app.post("/v1/ask", responses={**_ERRORS, 200: {"content": {"application/x-ndjson": {}}, "description":
                                                     "one JSON object per line: {type: token, text}, then "
                                                     "{type: result, result} or {type: error, code, message}"}})
    async def ask(body: AskIn, request: Request) -> StreamingResponse:
        stored = service.stored(_client_id(request), body.slice_key)
        history = tuple(Turn(t.question, t.answer) for t in body.history)
        check_question(body.question, region=body.region is not None, history=history)
        if body.max_new_tokens > config.max_new_tokens:
            raise InputError(f"max_new_tokens {body.max_new_tokens} is over this server's limit of"
                             f" {config.max_new_tokens}")
        region = None if body.region is None else _prompt(body.region, stored.shape)
        req = AskRequest(image_key=stored.runtime_key, slice=SliceRef(0, 0), question=body.question, region=region,
                         history=history,
                         max_new_tokens=body.max_new_tokens, threshold=body.threshold)
        return _stream_answer(service, req)

    return app


class _AnswerStream(StreamingResponse):
    """Sets ``stop`` however the response ends — finished, client gone (Starlette cancels the
    stream when it hears ``http.disconnect``), or cancelled — even if no line was sent yet."""

    def __init__(self, content, stop: threading.Event) -> None:
        super().__init__(content, media_type="application/x-ndjson")
        self._stop = stop

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stop.set()


def _stream_answer(service: _Service, req: AskRequest) -> StreamingResponse:
    """Tokens as NDJSON lines while the model generates, then the result (or one error line).
    A client that goes away stops its generation at the next token, and one that leaves while its
    ask waits for the model is dropped before the model runs it."""
    if not service.admission.try_enter():
        raise _busy(service.config)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    deadline = time.monotonic() + service.config.request_timeout_s

    def emit(obj) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(lines.put_nowait, obj)

    def on_token(text: str) -> None:
        if stop.is_set() or time.monotonic() > deadline:
            raise _Stop()  # LocalRuntime.ask lets on_token raise to end the generation
        emit({"type": "token", "text": text})

    def acquire() -> bool:
        """The model lock, polled so that a waiter whose client left gives up its slot at once."""
        while not stop.is_set():
            if service.model_lock.acquire(timeout=min(0.25, max(0.0, deadline - time.monotonic()))):
                return True
            if time.monotonic() > deadline:
                raise _Stop()
        return False

    def work() -> None:
        try:
            if not acquire():
                log.info("ask dropped: its client went away before the model started on it")
                return
            try:
                if stop.is_set():
                    log.info("ask dropped: its client went away before the model started on it")
                    return
                result = service.runtime.ask(req, on_token=on_token)
            finally:
                service.model_lock.release()
            emit({"type": "result", "result": ask_result_to_wire(result)})
        except _Stop:
            if stop.is_set():
                log.info("ask stopped: its client went away")
            emit({"type": "error", "code": "timeout", "message": _timeout(service.config).message})
        except UnknownImage:
            emit({"type": "error", "code": "unknown_slice", "message": "slice is no longer on the server"})
        except MedplibError as exc:
            emit({"type": "error", "code": "bad_input", "message": str(exc)})
        except Exception:  # noqa: BLE001 — logged here, one line to the client
            log.exception("ask failed")
            emit({"type": "error", "code": "server", "message": "internal server error (see the server log)"})
        finally:
            service.admission.leave()
            emit(None)

    service.executor.submit(work)

    async def body():
        while (item := await lines.get()) is not None:
            yield (json.dumps(item) + "\n").encode()

    return _AnswerStream(body(), stop)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def on_api_error(request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(UnknownImage)
    async def on_unknown(request, exc):
        return _error(404, "unknown_slice", "slice is no longer on the server: upload it again")

    @app.exception_handler(TooLarge)
    async def on_too_large(request, exc):
        return _error(413, "too_large", str(exc))

    @app.exception_handler(ClientDisconnect)
    async def on_gone(request, exc):  # nobody will read this; no traceback in the log either
        return _error(400, "disconnected", "client disconnected before its request arrived whole")

    @app.exception_handler(MedplibError)
    async def on_medplib(request, exc):
        return _error(400, "bad_input", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        return _error(422, "bad_input", f"{where}: {first.get('msg', 'invalid')}{more}")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request, exc: StarletteHTTPException):
        code = getattr(exc, "code", None) or {404: "not_found", 405: "method_not_allowed", 413: "too_large",
                                                503: "busy"}.get(exc.status_code, "http")
        return _error(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def on_bug(request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "server", f"internal server error ({type(exc).__name__}); see the server log")


__all__ = ["ApiError", "create_app"]
