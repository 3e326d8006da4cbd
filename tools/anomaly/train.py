#!/usr/bin/env python3
"""Train the window anomaly model on GENERATED series, export ONNX, quantize to int8.

Reproducible: fixed seeds, single-threaded data generation, torch deterministic on CPU.
Never reads NAB. Writes models/<name>/{model.onnx, model.int8.onnx, manifest.json}.

  python tools/anomaly/train.py                      # ~2-4 min on 2 cores
  python tools/anomaly/train.py --series 3000 --epochs 12
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from edged.anomaly.features import _range_scale, model_inputs, running_range  # noqa: E402
from synth import make_pair, make_series  # noqa: E402

NAME = "edged-anomaly-mlp"
VERSION = "0.2.0"
CLIP = (-1.0, 2.0)  # encoder inputs: readings placed in the running range, clipped


def encoder_dataset(seed: int, n_series: int, length: int, window: int, keep: float):
    """(noisy windows, clean windows) both placed in the noisy series' running range."""
    from numpy.lib.stride_tricks import sliding_window_view as swv

    rng = np.random.default_rng(seed)
    Xs, Ys = [], []
    for _ in range(n_series):
        x, clean = make_pair(rng, length)
        lo, hi = running_range(x)
        sc = _range_scale(lo, hi)
        t = np.arange(window - 1, len(x))
        sel = (t >= 100) & (rng.random(len(t)) < keep)
        t = t[sel]
        X = (swv(x, window)[sel] - lo[t, None]) / sc[t, None]
        Y = (swv(clean, window)[sel] - lo[t, None]) / sc[t, None]
        Xs.append(np.clip(X, *CLIP).astype(np.float32)); Ys.append(np.clip(Y, *CLIP).astype(np.float32))
    return np.concatenate(Xs), np.concatenate(Ys)


def dataset(seed: int, n_series: int, length: int, window: int, neg_keep: float):
    rng = np.random.default_rng(seed)
    Xs, ys = [], []
    for _ in range(n_series):
        x, lab = make_series(rng, length)
        lo, hi = running_range(x)
        X = model_inputs(x, lo, _range_scale(lo, hi), window)
        y = lab[window - 1:]
        keep = (y > 0) | (rng.random(len(y)) < neg_keep)
        keep[: 100] = False  # the detector is still learning there
        Xs.append(X[keep]); ys.append(y[keep])
    return np.concatenate(Xs), np.concatenate(ys).astype(np.float32)


def average_precision(y, s):
    order = np.argsort(-s)
    y = y[order]
    tp = np.cumsum(y)
    prec = tp / np.arange(1, len(y) + 1)
    return float(np.sum(prec * y) / max(y.sum(), 1))


def export_onnx(layers, window: int, path: str, out_name: str = "logit"):
    """MLP (list of (W[out,in], b[out])) -> ONNX with Gemm/Relu, dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    cur = "window"
    for i, (W, b) in enumerate(layers):
        inits += [numpy_helper.from_array(W.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = out_name if i == len(layers) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [out], transB=1, name=f"gemm{i}"))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"], name=f"relu{i}"))
            cur = f"a{i}"
    graph = helper.make_graph(
        nodes, "edged_window_" + out_name,
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", window])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", int(layers[-1][0].shape[0])])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edged-train")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def quantize(float_path: str, int8_path: str, calib: np.ndarray):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self, X):
            self.batches = iter([{"window": X[i:i + 1024]} for i in range(0, len(X), 1024)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(float_path, int8_path, Reader(calib), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def main_classifier(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "models", NAME))
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=20260)
    args = ap.parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    X, y = dataset(args.seed, args.series, args.length, args.window, neg_keep=0.15)
    Xv, yv = dataset(args.seed + 1, max(args.series // 8, 50), args.length, args.window, neg_keep=0.15)
    Xc, _ = dataset(args.seed + 2, 100, args.length, args.window, neg_keep=0.05)
    print(f"data: train {X.shape} pos {y.mean():.3f}, val {Xv.shape}, calib {Xc.shape} ({time.time() - t0:.0f}s)")

    W, H = args.window, args.hidden
    net = torch.nn.Sequential(torch.nn.Linear(W, H), torch.nn.ReLU(), torch.nn.Linear(H, H // 2), torch.nn.ReLU(),
                              torch.nn.Linear(H // 2, 1))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-5)
    pos_w = torch.tensor((1 - y.mean()) / max(y.mean(), 1e-6) * 0.3)
    lossf = torch.nn.BCEWithLogitsLoss(pos_weight=pos_w)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    g = torch.Generator().manual_seed(args.seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    for ep in range(args.epochs):
        perm = torch.randperm(len(Xt), generator=g)
        net.train()
        tot = 0.0
        for i in range(0, len(perm), 512):
            idx = perm[i:i + 512]
            opt.zero_grad()
            loss = lossf(net(Xt[idx]).squeeze(1), yt[idx])
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        sched.step()
        net.eval()
        with torch.no_grad():
            sv = net(torch.from_numpy(Xv)).squeeze(1).numpy()
        print(f"epoch {ep}: loss {tot / len(Xt):.4f}  val AP {average_precision(yv, sv):.4f} ({time.time() - t0:.0f}s)")

    os.makedirs(args.out, exist_ok=True)
    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in net if isinstance(m, torch.nn.Linear)]
    fpath, qpath = os.path.join(args.out, "model.onnx"), os.path.join(args.out, "model.int8.onnx")
    export_onnx(layers, W, fpath)
    quantize(fpath, qpath, Xc)

    sys.path.insert(0, ROOT)
    from edged.anomaly.model import OnnxWindowModel

    mf, mq = OnnxWindowModel(fpath), OnnxWindowModel(qpath)
    zf, zq = mf.logits(Xv), mq.logits(Xv)
    ap_f, ap_q = average_precision(yv, zf), average_precision(yv, zq)
    with torch.no_grad():
        zt = net(torch.from_numpy(Xv)).squeeze(1).numpy()
    # batch independence: row-at-a-time == batched
    single = np.array([mq.logits(Xv[i:i + 1])[0] for i in range(200)])
    batch_indep = float(np.max(np.abs(single - zq[:200])))
    print(f"val AP torch {average_precision(yv, zt):.4f} onnx-float {ap_f:.4f} int8 {ap_q:.4f}; "
          f"|float-torch| max {np.max(np.abs(zf - zt)):.2e}; |int8-float| mean {np.mean(np.abs(zq - zf)):.3f}; "
          f"int8 single-vs-batch max diff {batch_indep:.1e}")
    manifest = {
        "name": NAME,
        "version": VERSION,
        "task": "streaming anomaly scoring: logit that an anomaly started within the last readings of a window",
        "files": {os.path.basename(p): {"sha256": sha256(p), "bytes": os.path.getsize(p)} for p in (fpath, qpath)},
        "default_file": "model.int8.onnx",
        "inputs": [{"name": "window", "dtype": "float32", "shape": ["N", W],
                    "preprocessing": "edged.anomaly.features.normalise_model_window: window minus the median of its "
                                     "first W-1 readings, divided by max(1.4826*MAD, 0.01*running range), clipped to "
                                     "+-40, asinh"}],
        "outputs": [{"name": "logit", "dtype": "float32", "shape": ["N", 1],
                     "postprocessing": "softplus(logit) is the detector's 'model' channel"}],
        "architecture": f"MLP {W}-{H}-{H // 2}-1, ReLU",
        "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                         "activations": "uint8 per-tensor (static, MinMax calibration)",
                         "weights": "int8 per-channel",
                         "calibration_data": f"{len(Xc)} synthetic windows (seed {args.seed + 2})",
                         "batch_independent": True, "single_vs_batch_max_abs_diff": batch_indep},
        "validation": {"synthetic_val_average_precision_float": ap_f, "synthetic_val_average_precision_int8": ap_q,
                       "val_windows": int(len(Xv)), "val_positive_rate": float(yv.mean())},
        "provenance": {"script": "tools/anomaly/train.py", "generator": "tools/anomaly/synth.py",
                       "args": vars(args), "training_data": "synthetic only (no NAB)",
                       "torch": torch.__version__, "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "train_seconds": round(time.time() - t0, 1)},
    }
    json.dump(manifest, open(os.path.join(args.out, "manifest.json"), "w"), indent=2)
    print(f"wrote {args.out} ({time.time() - t0:.0f}s)")


def main_encoder(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="encoder")
    ap.add_argument("--out", default=os.path.join(ROOT, "models", NAME))
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--series", type=int, default=800)
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=20261)
    ap.add_argument("--recency", type=float, default=0.0,
                    help="target weight of reading i: 1 + recency * (i / (W-1))**2 (emphasise the newest readings)")
    ap.add_argument("--iso", type=float, default=0.0,
                    help="weight of the distance-alignment loss: embedding distances ~ weighted clean-window distances")
    args = ap.parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    W, D, H = args.window, args.dim, args.hidden
    X, Y = encoder_dataset(args.seed, args.series, args.length, W, keep=0.2)
    Xv, Yv = encoder_dataset(args.seed + 1, max(args.series // 10, 50), args.length, W, keep=0.2)
    Xc, _ = encoder_dataset(args.seed + 2, 100, args.length, W, keep=0.05)
    print(f"data: train {X.shape}, val {Xv.shape}, calib {Xc.shape} ({time.time() - t0:.0f}s)", flush=True)
    enc = torch.nn.Sequential(torch.nn.Linear(W, H), torch.nn.ReLU(), torch.nn.Linear(H, H), torch.nn.ReLU(),
                              torch.nn.Linear(H, D))
    dec = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, W))
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    wvec = torch.from_numpy((1.0 + args.recency * (np.arange(W) / (W - 1)) ** 2).astype(np.float32))
    base_mse = float(np.mean(((Xv - Yv) * wvec.numpy()) ** 2))  # error of passing the noisy input through
    Yv = Yv * wvec.numpy()
    g = torch.Generator().manual_seed(args.seed)
    for ep in range(args.epochs):
        perm = torch.randperm(len(Xt), generator=g)
        tot = 0.0
        for i in range(0, len(perm), 512):
            idx = perm[i:i + 512]
            opt.zero_grad()
            e = enc(Xt[idx])
            yw = Yt[idx] * wvec
            loss = torch.mean((dec(e) - yw) ** 2)
            if args.iso > 0:
                m = min(len(idx), 256)
                de = torch.cdist(e[:m], e[:m]) / np.sqrt(D)
                dc = torch.cdist(yw[:m], yw[:m]) / np.sqrt(W)
                loss = loss + args.iso * torch.mean((de - dc) ** 2)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        sched.step()
        with torch.no_grad():
            vm = float(torch.mean((dec(enc(torch.from_numpy(Xv))) - torch.from_numpy(Yv)) ** 2))
        print(f"epoch {ep}: train mse {tot / len(Xt):.5f}  val mse {vm:.5f} (noisy-input mse {base_mse:.5f}) "
              f"({time.time() - t0:.0f}s)", flush=True)

    os.makedirs(args.out, exist_ok=True)
    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in enc if isinstance(m, torch.nn.Linear)]
    fpath, qpath = os.path.join(args.out, "model.onnx"), os.path.join(args.out, "model.int8.onnx")
    export_onnx(layers, W, fpath, out_name="embedding")
    quantize(fpath, qpath, Xc)

    from edged.anomaly.model import OnnxWindowModel

    mf, mq = OnnxWindowModel(fpath), OnnxWindowModel(qpath)
    ef, eq = mf.embed(Xv), mq.embed(Xv)
    with torch.no_grad():
        et = enc(torch.from_numpy(Xv)).numpy()
        rec_f = float(torch.mean((dec(torch.from_numpy(ef.astype(np.float32))) - torch.from_numpy(Yv)) ** 2))
        rec_q = float(torch.mean((dec(torch.from_numpy(eq.astype(np.float32))) - torch.from_numpy(Yv)) ** 2))
    single = np.vstack([mq.embed(Xv[i:i + 1]) for i in range(200)])
    batch_indep = float(np.max(np.abs(single - eq[:200])))
    rel = float(np.mean(np.linalg.norm(eq - ef, axis=1)) / np.mean(np.linalg.norm(ef - ef.mean(0), axis=1)))
    print(f"val recon mse: float {rec_f:.5f} int8 {rec_q:.5f}; |float-torch| max {np.max(np.abs(ef - et)):.2e}; "
          f"int8 embedding error / embedding spread {rel:.3f}; single-vs-batch max diff {batch_indep:.1e}")
    manifest = {
        "name": NAME,
        "version": VERSION,
        "task": "window encoder for streaming anomaly detection: embeds the last W readings (placed in the "
                "metric's running range); the detector's 'model' channel is the distance of the newest "
                "embedding to its nearest non-overlapping past embedding",
        "files": {os.path.basename(p): {"sha256": sha256(p), "bytes": os.path.getsize(p)} for p in (fpath, qpath)},
        "default_file": "model.int8.onnx",
        "inputs": [{"name": "window", "dtype": "float32", "shape": ["N", W],
                    "preprocessing": "(x - lo) / max(hi - lo, eps) for the last W readings, lo/hi = min/max of the "
                                     f"metric's readings before the newest one; clipped to {list(CLIP)}"}],
        "outputs": [{"name": "embedding", "dtype": "float32", "shape": ["N", D]}],
        "architecture": f"MLP encoder {W}-{H}-{H}-{D} (ReLU); trained as a denoising autoencoder "
                        f"(decoder {D}-{H}-{W}, not shipped) mapping noisy windows to their noise-free signal",
        "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                         "activations": "uint8 per-tensor (static, MinMax calibration)",
                         "weights": "int8 per-channel",
                         "calibration_data": f"{len(Xc)} synthetic windows (seed {args.seed + 2})",
                         "batch_independent": True, "single_vs_batch_max_abs_diff": batch_indep},
        "validation": {"synthetic_val_recon_mse_float": rec_f, "synthetic_val_recon_mse_int8": rec_q,
                       "noisy_input_mse": base_mse, "int8_embedding_rel_error": rel, "val_windows": int(len(Xv))},
        "provenance": {"script": "tools/anomaly/train.py", "generator": "tools/anomaly/synth.py",
                       "args": vars(args), "training_data": "synthetic only (no NAB)",
                       "torch": torch.__version__,
                       "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "train_seconds": round(time.time() - t0, 1)},
    }
    json.dump(manifest, open(os.path.join(args.out, "manifest.json"), "w"), indent=2)
    print(f"wrote {args.out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    if "--kind" in sys.argv and sys.argv[sys.argv.index("--kind") + 1] == "classifier":
        argv = [a for a in sys.argv[1:]]
        i = argv.index("--kind"); del argv[i:i + 2]
        main_classifier(argv)
    else:
        main_encoder()
