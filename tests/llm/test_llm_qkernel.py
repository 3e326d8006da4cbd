"""edged's QMatMul kernel (edged/llm/kernels/qmatmul.c), compiled here and run by onnxruntime:
its results against the numpy reference of its arithmetic and against the fp32 product, the
AVX-512 path and the portable one, and models built with it."""

from __future__ import annotations

import json
import platform

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edged.llm import manifest, qkernel, quant
from edged.llm.build import BuildOptions, build
from edged.llm.engine import Engine
from edged.llm.gguf_model import GGUFModel
from edged.llm.reference import ReferenceLlama

from .conftest import write_tiny_gguf

def _targets() -> list[str]:
    """-march values to build and test: this CPU's own, and on x86 the portable loop (v2), the AVX2
    loop (v3) and the AVX-VNNI one (alderlake) where this CPU can run them."""
    if platform.machine() != "x86_64":
        return ["native"]
    flags = set(open("/proc/cpuinfo").read().split())
    return ["native", "x86-64-v2", *(["x86-64-v3"] if {"avx2", "fma", "f16c"} <= flags else []),
            *(["alderlake"] if "avx_vnni" in flags else [])]


TARGETS = _targets()


@pytest.fixture(scope="session")
def libraries(tmp_path_factory):
    """The op compiled for this CPU and, on x86, for a baseline one (the portable C path)."""
    root = tmp_path_factory.mktemp("qmatmul")
    include = qkernel.ort_include_dir()  # downloads onnxruntime's headers once per machine
    return {t: qkernel.compile_library(root / f"qmatmul-{t}.so", include, march=t) for t in TARGETS}


def _raw_blocks(rng, n: int, k: int, source: str) -> np.ndarray:
    """GGUF bytes of an [n, k] matrix in ``source``'s block format, random codes and scales."""
    nb = k // quant.QK
    d = (rng.uniform(0.005, 0.05, (n, nb))).astype(np.float16).view(np.uint8).reshape(n, nb, 2)
    if source == "Q8_0":
        qs = rng.integers(-128, 128, (n, nb, 32)).astype(np.int8).view(np.uint8)
        parts = [d, qs]
    else:
        qs = rng.integers(0, 256, (n, nb, 16)).astype(np.uint8)
        parts = [d, qs]
        if source == "Q4_1":
            m = rng.uniform(-0.3, 0.1, (n, nb)).astype(np.float16).view(np.uint8).reshape(n, nb, 2)
            parts = [d, m, qs]
    return np.concatenate(parts, axis=-1).reshape(n, -1)


def _weight(rng, n: int, k: int, source: str) -> quant.BlockQuant:
    ggml = {"Q4_0": quant.Q4_0, "Q4_1": quant.Q4_1, "Q8_0": quant.Q8_0}[source]
    return quant.decode_blocks(_raw_blocks(rng, n, k, source), ggml, k)


def _session(library, w: quant.BlockQuant, precise: bool) -> ort.InferenceSession:
    p = qkernel.pack(w)
    node = helper.make_node("QMatMul", ["X", "W", "D", "M"], ["Y"], domain=qkernel.DOMAIN,
                            K=p.k, N=p.n, bits=p.bits, zero_point=p.zero_point, precise=int(precise))
    graph = helper.make_graph(
        [node], "qmatmul", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["m", p.k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", p.n])],
        [numpy_helper.from_array(p.codes, "W"), numpy_helper.from_array(p.scales, "D"), numpy_helper.from_array(p.mins, "M")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(qkernel.DOMAIN, 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _activations(rng, m: int, k: int) -> np.ndarray:
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block: scale 0, no division by it
    x[-1, 32:64] *= 1000.0  # one block far larger than the others
    return x


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("precise", [False, True], ids=["llama", "precise"])
@pytest.mark.parametrize("source", ["Q4_1", "Q4_0", "Q8_0"])
@pytest.mark.parametrize("m", [1, 5, 17])
def test_kernel_equals_its_reference(libraries, target, precise, source, m):
    rng = np.random.default_rng(7)
    w = _weight(rng, 3 * 16 + 5, 96, source)  # 4 row groups, the last one 5 rows: an odd pair and padding
    x = _activations(rng, m, 96)
    got = _session(libraries[target], w, precise).run(None, {"X": x})[0]
    want = qkernel.reference(x, w, precise=precise)
    assert got.shape == (m, w.shape[0])
    # the same integer sums and scales; only the fp32 order of additions differs
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


@pytest.mark.parametrize("source", ["Q4_1", "Q8_0"])
def test_precise_mode_is_close_to_the_fp32_product_and_llama_mode_is_not(libraries, source):
    rng = np.random.default_rng(3)
    w = _weight(rng, 256, 576, source)
    x = rng.standard_normal((4, 576)).astype(np.float32)
    exact = x.astype(np.float64) @ w.dequantize().astype(np.float64).T
    scale = np.abs(exact).max()
    precise = _session(libraries["native"], w, True).run(None, {"X": x})[0]
    llama = _session(libraries["native"], w, False).run(None, {"X": x})[0]
    precise_err, llama_err = np.abs(precise - exact).max() / scale, np.abs(llama - exact).max() / scale
    assert precise_err < 1e-3
    assert llama_err > 20 * precise_err  # int8 activations alone: llama.cpp's error, not fp32's


def test_kernel_output_does_not_depend_on_the_batch(libraries):
    """A row's result is the same alone and beside others (per-row activation scales)."""
    rng = np.random.default_rng(11)
    w = _weight(rng, 64, 128, "Q4_1")
    x = rng.standard_normal((6, 128)).astype(np.float32)
    sess = _session(libraries["native"], w, True)
    batch = sess.run(None, {"X": x})[0]
    for i in range(len(x)):
        np.testing.assert_array_equal(sess.run(None, {"X": x[i:i + 1]})[0][0], batch[i])


def test_pack_layout_puts_each_code_where_the_kernel_reads_it():
    rng = np.random.default_rng(1)
    w = _weight(rng, 20, 64, "Q4_1")
    p = qkernel.pack(w)
    assert p.codes.shape == (2, 2, 4, 64) and p.scales.shape == (2, 2, 16) and p.mins.shape == (2, 2, 16)
    g, b, r, code = 1, 1, 3, 13  # row 19, block 1, code 13 = 8 * 1 + 4 + 1: step 1, high nibble, lane 1
    byte = p.codes[g, b, 1, 4 * r + 1]
    assert byte >> 4 == w.q[16 + r, 32 * b + code]
    assert p.scales[g, b, r] == w.scale[16 + r, b]
    assert (p.codes[1, :, :, 4 * 4:] == 0).all() and (p.scales[1, :, 4:] == 0).all()  # rows 20-31: padding


@pytest.fixture(scope="module")
def tiny_kernel_models(libraries, tmp_path_factory):
    """The tiny GGUF built with the kernel in both modes (the vocabulary, 267, is not a multiple of 16)."""
    root = tmp_path_factory.mktemp("tiny-kernel")
    src = write_tiny_gguf(root / "tiny.gguf")
    out = {mode: root / mode for mode in ("precise", "llama")}
    for mode, path in out.items():
        build(src, path, BuildOptions(kernel=mode))
    return src, out


def test_built_model_runs_every_block_matrix_on_the_kernel(tiny_kernel_models):
    import onnx

    _, dirs = tiny_kernel_models
    doc = manifest.verify(dirs["precise"])
    assert doc["build"]["kernel"] == "precise" and qkernel.LIBRARY in doc["files"]
    info = json.loads((dirs["precise"] / "model.json").read_text())
    assert info["custom_ops"] == [qkernel.LIBRARY] and info["cpu"] == qkernel.cpu_signature()
    ops = {n.op_type for n in onnx.load(str(dirs["precise"] / "decoder.onnx"), load_external_data=False).graph.node}
    assert "QMatMul" in ops and "MatMulNBits" not in ops


def test_precise_model_gives_the_fp32_models_tokens(tiny_kernel_models):
    src, dirs = tiny_kernel_models
    model = GGUFModel(src)
    ids = np.random.default_rng(5).integers(0, model.config.n_vocab, 32).tolist()
    want = ReferenceLlama(model).logits(np.asarray(ids))
    scale = np.abs(want).max()
    precise = Engine(dirs["precise"], threads=2, warm=False).score(ids)
    llama = Engine(dirs["llama"], threads=2, warm=False).score(ids)
    assert (precise.argmax(-1) == want.argmax(-1)).all()
    np.testing.assert_allclose(precise, want, rtol=0, atol=2e-3 * scale)
    assert np.abs(llama - want).max() > 5 * np.abs(precise - want).max()
    # the cached path (prefill, then token by token) gives the same next tokens; its logits move
    # within the precision (an fp32 rounding apart upstream can move an activation code by one)
    eng = Engine(dirs["precise"], threads=1, warm=False)
    cur = eng._extend(eng._empty, ids[:20], None)
    for i in range(20, len(ids)):
        assert cur.logits.argmax() == want[i - 1].argmax()
        np.testing.assert_allclose(cur.logits, precise[i - 1], rtol=0, atol=2e-3 * scale)
        cur = eng._run(cur, [ids[i]])


def test_engine_refuses_a_kernel_compiled_for_another_cpu(tiny_kernel_models, tmp_path):
    import shutil

    _, dirs = tiny_kernel_models
    moved = tmp_path / "moved"
    shutil.copytree(dirs["precise"], moved)
    info = json.loads((moved / "model.json").read_text())
    info["cpu"] = "aarch64:0000000000000000"
    (moved / "model.json").write_text(json.dumps(info))
    doc = manifest.read_manifest(moved)
    manifest.write_manifest(moved, list(doc["files"]), **{k: v for k, v in doc.items() if k in ("name", "source", "architecture", "quantization", "build")})
    with pytest.raises(manifest.ManifestError, match="compiled for another CPU.*edged models pull"):
        Engine(moved, threads=1, warm=False)


def test_missing_headers_are_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(qkernel.KernelBuildError, match="ORT_INCLUDE_DIR=.*onnxruntime_c_api.h"):
        qkernel.ort_include_dir()


def test_a_download_that_does_not_match_its_checksum_is_refused(tmp_path):
    import http.server
    import threading

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "pkg.tgz").write_bytes(b"not the package")
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "www"), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pkg.tgz"
        with pytest.raises(qkernel.KernelBuildError, match="sha256 .* is not the pinned"):
            qkernel.fetch_headers(tmp_path / "cache", url=url)
    finally:
        server.shutdown()
    assert not (tmp_path / "cache").exists()


def test_q4_1_mins_are_ggufs_own_fp16_values():
    rng = np.random.default_rng(2)
    raw = _raw_blocks(rng, 64, 256, "Q4_1")
    w = quant.decode_blocks(raw, quant.Q4_1, 256)
    gguf_m = raw.reshape(64, 8, 20)[..., 2:4].copy().view(np.float16)[..., 0]
    np.testing.assert_array_equal(qkernel.ggml_mins(w), gguf_m)


def test_each_build_says_which_loop_it_runs(libraries):
    import re

    cpu = open("/proc/cpuinfo").read()
    native_simd = bool(re.search(r"\bavx512_vnni\b", cpu)) and bool(re.search(r"\bavx512bw\b", cpu))
    assert qkernel.library_path(libraries["native"]) == ("avx512-vnni" if native_simd else "portable")
    expected = {"x86-64-v2": "portable", "x86-64-v3": "avx2", "alderlake": "avx-vnni"}
    for target, path in expected.items():
        if target in libraries:
            assert qkernel.library_path(libraries[target]) == path


def _session_with(library, w: quant.BlockQuant, **override):
    """A QMatMul session whose inputs or attributes are replaced by ``override``."""
    p = qkernel.pack(w)
    tensors = {"W": p.codes, "D": p.scales, "M": p.mins}
    attrs = dict(K=p.k, N=p.n, bits=p.bits, zero_point=p.zero_point, precise=1)
    for key, value in override.items():
        (tensors if key in tensors else attrs)[key] = value
    node = helper.make_node("QMatMul", ["X", "W", "D", "M"], ["Y"], domain=qkernel.DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "qmatmul", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["m", p.k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", attrs["N"]])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(qkernel.DOMAIN, 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("override", [
    {"W": np.zeros(64, np.uint8)},                      # codes for fewer rows than N
    {"D": np.zeros((1, 2, 16), np.float16)},           # scales too short
    {"M": np.zeros((1, 1, 16), np.float16)},           # mins too short
    {"M": np.zeros(0, np.float16)},                    # a Q4_1 matrix without its mins
    {"bits": 8},                                       # 8-bit codes read from a 4-bit buffer
], ids=["W", "D", "M-short", "M-missing", "bits"])
def test_weights_of_the_wrong_size_are_an_error_not_a_wild_read(libraries, override):
    w = _weight(np.random.default_rng(0), 40, 64, "Q4_1")
    x = np.ones((1, 64), np.float32)
    with pytest.raises(Exception, match="QMatMul"):
        _session_with(libraries["native"], w, **override).run(None, {"X": x})


@pytest.mark.parametrize("override", [{"zero_point": 5}, {"precise": 2}, {"K": 40}])
def test_bad_attributes_are_refused_when_the_session_is_made(libraries, override):
    w = _weight(np.random.default_rng(0), 16, 64, "Q4_1")
    with pytest.raises(Exception, match="QMatMul: K must be"):
        _session_with(libraries["native"], w, **override)


@pytest.mark.parametrize("target", TARGETS)
def test_nan_and_infinity_propagate_as_in_fp32(libraries, target):
    w = _weight(np.random.default_rng(4), 16, 96, "Q8_0")
    x = np.random.default_rng(4).standard_normal((3, 96)).astype(np.float32)
    x[0, 40], x[1, 70] = np.nan, np.inf
    x[2, :32] = 1e-44  # subnormal block: 127 / amax would overflow; it counts as zeros
    y = _session(libraries[target], w, True).run(None, {"X": x})[0]
    assert np.isnan(y[0]).all() and np.isnan(y[1]).all()
    assert np.isfinite(y[2]).all()
    np.testing.assert_allclose(y[2], qkernel.reference(x[2:], w, precise=True)[0], rtol=0, atol=1e-5)


def test_a_pull_on_another_cpu_or_with_new_kernel_source_rebuilds(tiny_kernel_models, tmp_path, monkeypatch):
    src, _ = tiny_kernel_models
    out = tmp_path / "m"
    build(src, out, BuildOptions(kernel="precise"))
    stamp = (out / "manifest.json").stat().st_mtime_ns
    build(src, out, BuildOptions(kernel="precise"))  # current: left alone
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    monkeypatch.setattr(qkernel, "cpu_signature", lambda: "x86_64:another")
    build(src, out, BuildOptions(kernel="precise"))
    assert json.loads((out / "model.json").read_text())["cpu"] == "x86_64:another"
    import edged.llm.build as build_module
    monkeypatch.setattr(build_module, "source_sha256_of_kernel", lambda: "0" * 64)  # the kernel's source changed
    build(src, out, BuildOptions(kernel="precise"))
    assert json.loads((out / "model.json").read_text())["kernel_source"] == "0" * 64


def test_engine_loads_only_libraries_its_manifest_lists(tiny_kernel_models, tmp_path):
    import shutil

    _, dirs = tiny_kernel_models
    moved = tmp_path / "moved"
    shutil.copytree(dirs["precise"], moved)
    info = json.loads((moved / "model.json").read_text())
    info["custom_ops"] = ["/tmp/elsewhere.so"]
    (moved / "model.json").write_text(json.dumps(info))
    with pytest.raises(manifest.ManifestError, match="op libraries outside its manifest"):
        Engine(moved, threads=1, warm=False, verify=False)


def test_build_errors_are_kernel_build_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(qkernel.KernelBuildError, match="no C compiler"):
        qkernel.compiler()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(qkernel.KernelBuildError, match="fetching onnxruntime's C headers"):
        qkernel.fetch_headers(blocker / "cache", url="http://127.0.0.1:9/none.tgz")  # parent is a file


def test_models_list_and_verify_show_the_kernel_and_its_cpu(tiny_kernel_models, tmp_path, monkeypatch):
    import shutil

    from edged.llm import catalog

    _, dirs = tiny_kernel_models
    models = tmp_path / "models"
    shutil.copytree(dirs["precise"], models / "tiny")
    row = next(r for r in catalog.list_models(models) if r["name"] == "tiny")
    assert (row["kernel"], row["kernel_cpu_ok"]) == ("precise", True)
    catalog.verify_model(models, "tiny")
    monkeypatch.setattr(qkernel, "cpu_signature", lambda: "x86_64:another")
    assert next(r for r in catalog.list_models(models) if r["name"] == "tiny")["kernel_cpu_ok"] is False
    with pytest.raises(manifest.ManifestError, match="compiled for another CPU.*edged models pull tiny"):
        catalog.verify_model(models, "tiny")
