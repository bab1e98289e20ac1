"""`medplib serve` exposed beyond loopback: token, size cap, busy/timeout, malformed and fuzzed
payloads — always a clear one-line JSON error, never a 500 with a traceback, never a crash."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medplib_runtime.errors import InputError, RemoteError
from medplib_runtime.remote import RemoteRuntime
from medplib_runtime.schemas import Box, Prompt, SegmentRequest, SliceRef
from medplib_runtime.server.config import ServerConfig, check_exposure, is_loopback
from medplib_runtime.wire import encode_array, pack_bytes

pytestmark = pytest.mark.process  # each test starts processes: a tier of its own (conftest)

TOKEN = "s3cret-token-for-tests"
ALLOWED = {200, 202, 400, 401, 404, 405, 413, 422, 503, 504}


@pytest.fixture(scope="module")
def exposed():
    """Listening on every interface (so a token is required), with tight limits."""
    from _server import ServerProcess

    server = ServerProcess(["--token", TOKEN, "--preload", "segment", "--max-body-mb", "2", "--max-queue", "1",
                            "--request-timeout-s", "0.5"], host="0.0.0.0").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def authed(exposed):
    with httpx.Client(base_url=exposed.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def uploaded(authed):
    """A real slice on the server (key, shape) for the fuzzers to aim at."""
    plane = np.random.default_rng(1).normal(100, 30, (64, 80)).astype(np.int16)
    r = authed.put("/v1/slices", params={"dtype": "int16", "rows": 64, "cols": 80, "lo": "0.0", "hi": "200.0",
                                         "modality": "MR"}, content=pack_bytes(plane))
    assert r.status_code == 200, r.text
    return r.json()["slice_key"]


def _one_line_error(r: httpx.Response) -> str:
    assert r.status_code in ALLOWED, (r.status_code, r.text[:500])
    assert "Traceback" not in r.text
    if r.status_code >= 400:
        message = r.json()["error"]["message"]
        assert message and "\n" not in message
        return message
    return ""


def test_non_loopback_without_token_refuses_to_start():
    out = subprocess.run([sys.executable, "-m", "medplib_runtime.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "without a token" in out.stderr
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    check_exposure(ServerConfig(host="127.0.0.1"))  # loopback without a token is fine
    with pytest.raises(InputError, match="at least 8"):
        ServerConfig(token="short")


def test_unauthenticated_requests_cannot_get_in(exposed):
    assert httpx.get(exposed.url + "/health").json()["auth"] is True  # health is public, says nothing more
    for method, path in [("GET", "/v1/info"), ("GET", "/v1/openapi.json"), ("PUT", "/v1/slices"),
                         ("POST", "/v1/segment"), ("POST", "/v1/ask"), ("GET", "/v1/nope"), ("GET", "/docs")]:
        for headers in ({}, {"Authorization": "Bearer wrong-token-123"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            r = httpx.request(method, exposed.url + path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.json()["error"]["code"] == "auth"
    for token in (None, "wrong-token-123"):
        runtime = RemoteRuntime(exposed.url, token=token or "")
        with pytest.raises(RemoteError, match="refused the token") as err:
            runtime.info()
        assert err.value.code == "auth"
        runtime.close()


def test_token_opens_it(exposed):
    runtime = RemoteRuntime(exposed.url, token=TOKEN)
    assert runtime.info().transport == f"remote {exposed.url}"
    runtime.close()


def test_body_size_cap(authed):
    big = b"\0" * (3 * 2**20)
    params = {"dtype": "uint8", "rows": 2048, "cols": 1536, "lo": "0", "hi": "1", "modality": "MR"}
    r = authed.put("/v1/slices", params=params, content=big)
    assert r.status_code == 413 and "2 MB" in _one_line_error(r)

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(48):
            yield b"\0" * 65536

    r = authed.put("/v1/slices", params=params, content=chunks())
    assert r.status_code == 413
    runtime = RemoteRuntime(authed.base_url.__str__().rstrip("/"), token=TOKEN)
    key = runtime.set_image(np.random.default_rng(0).normal(size=(1200, 1200)).astype(np.float32))  # 5.8 MB raw
    with pytest.raises(RemoteError, match="too large") as err:
        runtime.segment(SegmentRequest(key, SliceRef(0, 0), Prompt(box=Box(10, 10, 50, 50))))
    assert err.value.code == "too_large"
    runtime.close()


def test_malformed_requests_and_no_paths(authed, uploaded):
    cases = [
        authed.post("/v1/segment", content=b"{not json", headers={"Content-Type": "application/json"}),
        authed.post("/v1/segment", json={"slice_key": uploaded, "prompt": {"box": [1, 2, 3]}}),
        authed.post("/v1/segment", json={"slice_key": "../../etc/passwd", "prompt": {}}),
        authed.post("/v1/segment", json={"slice_key": uploaded, "prompt": {}, "path": "/etc/passwd"}),
        authed.post("/v1/segment", json={"slice_key": uploaded, "prompt": {"mask": {"dtype": "uint8", "shape": [64, 80],
                                                                                    "codec": "zlib", "data": "AAAA"}}}),
        authed.post("/v1/segment", json={"slice_key": uploaded, "prompt": {"box": [0, 0, 500, 500]}}),
        authed.post("/v1/ask", json={"slice_key": uploaded, "question": "", "max_new_tokens": 10**6}),
        authed.post("/v1/ask", json={"slice_key": uploaded, "question": "Is <region> the lesion?"}),  # no region
        authed.post("/v1/ask", json={"slice_key": uploaded, "question": "Is <region_feat> the lesion?"}),  # reserved
        authed.put("/v1/slices", params={"dtype": "int16", "rows": 64, "cols": 80, "lo": 1, "hi": 0, "modality": "MR"},
                   content=b"x"),
        authed.put("/v1/slices", params={"dtype": "object", "rows": 4, "cols": 4, "lo": 0, "hi": 1, "modality": "MR"},
                   content=b"x"),
        authed.get("/v1/slices/../../etc/passwd"),
        authed.get("/v1/slices/" + "s" + "0" * 32),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        _one_line_error(r)
    assert cases[5].json()["error"]["message"].startswith("box (0,0,500,500) lies outside the 64×80 slice")
    assert cases[-1].json()["error"]["code"] == "unknown_slice"
    assert "no region was given" in cases[7].json()["error"]["message"]
    assert "holds <region_feat>, a token the prompt reserves" in cases[8].json()["error"]["message"]


def test_timeout_then_busy_then_recovers(exposed, uploaded):
    runtime = RemoteRuntime(exposed.url, token=TOKEN, retries=0)
    vol = np.random.default_rng(2).normal(100, 20, (3, 96, 96)).astype(np.float32)
    vol[:, 30:60, 30:60] += 200
    key = runtime.set_image(vol)
    req = SegmentRequest(key, SliceRef(0, 1), Prompt(box=Box(25, 25, 65, 65)))
    with pytest.raises(RemoteError, match="timed out") as err:  # embedding a new slice takes > 0.5 s
        runtime.segment(req)
    assert err.value.code == "timeout"
    with pytest.raises(RemoteError, match="busy") as err:  # the timed-out work still holds the only slot
        runtime.segment(req)
    assert err.value.code == "busy"
    patient = RemoteRuntime(exposed.url, token=TOKEN, retries=6)  # backs off until the slot is free
    patient.set_image(vol)
    deadline = time.time() + 30
    while True:  # the slice is now embedded: a cached segment fits in the limit
        try:
            mask = patient.segment(req).mask
            break
        except RemoteError as exc:
            assert exc.code in ("busy", "timeout") and time.time() < deadline
    assert mask[35:55, 35:55].mean() > 0.9 and mask[:20].sum() == 0
    runtime.close()
    patient.close()


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@st.composite
def prompts(draw):
    return draw(st.fixed_dictionaries({}, optional={
        "box": st.lists(st.floats(-100, 200) | st.integers(-5, 100), min_size=0, max_size=5),
        "points": st.lists(st.tuples(st.floats(-10, 100), st.floats(-10, 100), st.integers(-1, 2)), max_size=3),
        "mask": st.fixed_dictionaries({"dtype": st.sampled_from(["uint8", "bool", "float32", "weird"]),
                                       "shape": st.lists(st.integers(-1, 100), max_size=4),
                                       "codec": st.sampled_from(["zlib", "gzip"]),
                                       "data": st.sampled_from(["", "AAAA", encode_array(np.ones((64, 80), np.uint8))["data"]])}),
    }))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_payloads_never_crash_the_server(authed, uploaded, data):
    endpoint = data.draw(st.sampled_from(["segment", "ask", "prefetch", "slices", "junk"]))
    key = data.draw(st.sampled_from([uploaded, "s" + "f" * 32, "nope"]))
    if endpoint == "segment":
        body = data.draw(st.fixed_dictionaries({"slice_key": st.just(key), "prompt": prompts()},
                                               optional={"threshold": st.floats(-1, 2) | st.none()}))
        r = authed.post("/v1/segment", json=body)
    elif endpoint == "ask":
        body = data.draw(st.fixed_dictionaries({"slice_key": st.just(key), "question": st.text(max_size=30)},
                                               optional={"region": prompts(), "max_new_tokens": st.integers(-5, 10**5),
                                                         "history": json_values}))
        body["max_new_tokens"] = min(body.get("max_new_tokens", 1), 2)  # keep generations short
        r = authed.post("/v1/ask", json=body)
    elif endpoint == "prefetch":
        r = authed.post("/v1/prefetch", json=data.draw(st.dictionaries(st.sampled_from(["slice_keys", "x"]),
                                                                        json_values, max_size=2)))
    elif endpoint == "slices":
        params = data.draw(st.dictionaries(st.sampled_from(["dtype", "rows", "cols", "lo", "hi", "modality"]),
                                           st.text(max_size=6) | st.integers(-3, 70000), max_size=6))
        r = authed.put("/v1/slices", params=params, content=data.draw(st.binary(max_size=256)))
    else:
        r = authed.request(data.draw(st.sampled_from(["GET", "POST", "DELETE", "PATCH"])),
                           "/v1/" + data.draw(st.text("abcdefgs/._-%0", max_size=20)), json=data.draw(json_values))
    _one_line_error(r)
    assert r.status_code != 500


def test_server_survived_everything(exposed, authed):
    assert exposed.proc.poll() is None
    assert authed.get("/v1/info").status_code == 200
    assert "Traceback" not in exposed.log()


def test_serve_refuses_a_missing_or_corrupt_glue_in_one_line(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 32)
    for glue, message in ((tmp_path / "missing.safetensors", "does not exist"), (bad, "not readable safetensors")):
        out = subprocess.run([sys.executable, "-m", "medplib_runtime.cli", "serve", "--port", "1", "--glue", str(glue)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert out.stderr.strip().count("\n") == 0 and message in out.stderr and str(glue) in out.stderr


def test_serve_glue_is_the_glue_remote_clients_get(tmp_path):
    """`medplib serve --glue FILE`: remote info reports that file's parts (here a copy of the shipped glue)."""
    import shutil

    from _server import ServerProcess

    from medplib_runtime.glue.files import glue_path
    from medplib_runtime.presets import MEDPLIB_LITE
    from medplib_runtime.remote import RemoteRuntime

    mine = tmp_path / "my-run-adapter.safetensors"
    shutil.copy(glue_path(MEDPLIB_LITE), mine)
    server = ServerProcess(["--preload", "none", "--glue", str(mine)]).start()
    try:
        runtime = RemoteRuntime(server.url)
        parts = {p.name: p for p in runtime.info().parts}
        runtime.close()
        assert parts["moe_router"].trained and "my-run-adapter.safetensors" in parts["moe_router"].source
    finally:
        server.stop()
