"""One matrix-vector product per decode step, timed: QMatMul against onnxruntime's MatMulNBits.

    .venv/bin/python tools/llm/bench_qmatmul.py --gguf ~/.cache/edged/gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--threads 1] [--runs 7] [--calls 200] [--march native]

For the real model's matrix shapes (layer 0's fused q|k|v, attn_output, fused gate|up, ffn_down,
and the Q8_0 output matrix), each kernel alone in a one-node ONNX graph, M = 1: QMatMul precise
and llama (edged/llm/kernels/qmatmul.c, compiled here), MatMulNBits with fp32 activations
(accuracy_level 0, what the exact graph without the kernel runs; its Q4_1 correction node not
included) and with int8 activations (accuracy_level 4).  Microseconds per call, median of
``--runs`` runs of ``--calls`` calls (onnxruntime's per-call overhead included); the kernels of one
shape alternate within each run.  ``--march``: the QMatMul loop to compile (native: this CPU's
best; x86-64-v3: AVX2; alderlake: AVX-VNNI; x86-64-v2: portable C).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def session(w, kind: str, library: Path, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edged.llm import qkernel, quant

    n, k = w.shape
    if kind.startswith("qmatmul"):
        p = qkernel.pack(w)
        inits = [numpy_helper.from_array(p.codes, "W"), numpy_helper.from_array(p.scales, "D"), numpy_helper.from_array(p.mins, "M")]
        node = helper.make_node("QMatMul", ["X", "W", "D", "M"], ["Y"], domain=qkernel.DOMAIN, K=k, N=n, bits=p.bits,
                                zero_point=p.zero_point, precise=int(kind == "qmatmul-precise"))
        domain = qkernel.DOMAIN
    else:
        inits = [numpy_helper.from_array(w.matmulnbits_b(), "B"), numpy_helper.from_array(w.scale.reshape(-1), "S"),
                 numpy_helper.from_array(w.matmulnbits_zp(), "Z")]
        node = helper.make_node("MatMulNBits", ["X", "B", "S", "Z"], ["Y"], domain="com.microsoft", K=k, N=n, bits=w.bits,
                                block_size=quant.QK, accuracy_level=int(kind[-1]))
        domain = "com.microsoft"
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(domain, 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--march", default="native", help="-march for the QMatMul build (its loop is printed)")
    a = ap.parse_args()

    from edged.llm import qkernel, quant
    from edged.llm.gguf_model import GGUFModel

    model = GGUFModel(a.gguf)
    shapes = {
        "q|k|v": quant.concat_rows([model.weight(f"blk.0.attn_{r}.weight") for r in "qkv"]),
        "attn_output": model.weight("blk.0.attn_output.weight"),
        "gate|up": quant.concat_rows([model.weight("blk.0.ffn_gate.weight"), model.weight("blk.0.ffn_up.weight")]),
        "ffn_down": model.weight("blk.0.ffn_down.weight"),
        "output (Q8_0)": model.weight("token_embd.weight"),
    }
    kinds = ["qmatmul-precise", "qmatmul-llama", "matmulnbits-acc0", "matmulnbits-acc4"]
    with tempfile.TemporaryDirectory() as tmp:
        library = qkernel.compile_library(Path(tmp) / qkernel.LIBRARY, march=a.march)
        print(f"QMatMul -march={a.march} ({qkernel.library_path(library)} loop); threads {a.threads}, "
              f"median of {a.runs} runs x {a.calls} calls, microseconds per call\n")
        print("| matrix (N x K) | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        rng = np.random.default_rng(0)
        for name, w in shapes.items():
            x = {"X": rng.standard_normal((1, w.shape[1])).astype(np.float32)}
            sessions = {kind: session(w, kind, library, a.threads) for kind in kinds}
            calls = {kind: max(3, a.calls // 100) if kind == "matmulnbits-acc0" and w.bits == 8 else a.calls for kind in kinds}
            times: dict[str, list[float]] = {kind: [] for kind in kinds}
            for s in sessions.values():
                for _ in range(5):
                    s.run(None, x)
            for _ in range(a.runs):
                for kind, s in sessions.items():
                    t = time.perf_counter()
                    for _ in range(calls[kind]):
                        s.run(None, x)
                    times[kind].append((time.perf_counter() - t) / calls[kind] * 1e6)
            cells = [f"{statistics.median(times[k]):,.1f}" for k in kinds]
            print(f"| {name} ({w.shape[0]} x {w.shape[1]}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
