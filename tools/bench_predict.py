"""fer-predict throughput, faces/s: the model alone (face crops in) and the whole pipeline (photo files in:
decode, detection, alignment, crop, model), fused (the model as fer-predict loads it, default backend) against
eager (``fer_kernels.nn.to_reference(model)``, plain PyTorch), at several batch sizes.

    .venv/bin/python tools/bench_predict.py                       # IDEnNet-IF-40, batches 1 and 64, 5 repeats
    .venv/bin/python tools/bench_predict.py --repeats 3 --faces 64 --json out.json

The model is built from the registry at the README's size (``idennet_if_40``, 6 expressions, 80 identities,
input 1x48x48 centre-cropped from 60x60 faces, as fer-train trains it) with random weights (speed does not
depend on them), saved as a fer-train checkpoint and loaded by :class:`fer_models.predict.Classifier`, the
path fer-predict takes. Faces: scikit-image's astronaut photo (512x512, one face; the test extra installs
scikit-image), written ``--faces`` times as PNG files for the pipeline; her aligned 60x60 crop, ``--faces``
times, for the model alone. Every (mode, batch, provider) is timed once per repeat, in an order rotated by one
each repeat, in one process, with glibc's allocator pinned as fer-bench pins it (``M_MMAP_MAX=0``,
``M_TRIM_THRESHOLD`` max) for all of them; the table gives the median over repeats and the median of the
per-repeat fused/eager ratios with their range.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _pin_allocator() -> bool:  # before torch allocates anything; the same settings as fer-bench's plugin
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, 2**31 - 1) == 1  # M_MMAP_MAX, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


ALLOCATOR_PINNED = _pin_allocator()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def build(tmp: str, model_name: str):
    import fer_kernels
    import fer_models
    from fer_models.predict import Classifier

    torch.manual_seed(0)
    kw = {"num_expressions": 6, "num_identities": 80}
    model = fer_models.create_model(model_name, **kw)
    cfg = {"model": model_name, "model_kwargs": kw, "target": "expression",
           "classes": ["anger", "disgust", "fear", "happiness", "sadness", "surprise"],
           "input_size": list(model.input_size), "resize": 60, "crop": int(model.input_size[-1]),
           "channels": int(model.input_size[0])}
    ckpt = os.path.join(tmp, "model.pt")
    torch.save({"model": model.state_dict(), "config": cfg}, ckpt)
    fused = Classifier(ckpt)
    eager = Classifier(ckpt)
    eager.model = fer_kernels.nn.to_reference(eager.model).eval()
    return {"fused": fused, "eager": eager}


def inputs(tmp: str, n: int):
    import cv2
    from skimage import data as skdata

    from fer_models.prep import FacePrep

    photo = skdata.astronaut()[:, :, ::-1]
    folder = os.path.join(tmp, "photos")
    os.makedirs(folder)
    for i in range(n):
        cv2.imwrite(os.path.join(folder, f"{i:04d}.png"), photo)
    crop, info = FacePrep(60).process(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    assert crop is not None, "no face found in the astronaut photo"
    return folder, np.repeat(crop[None], n, axis=0)


def time_once(mode: str, clf, batch: int, folder: str, crops: np.ndarray) -> tuple[float, int]:
    """(seconds, faces) of one pass."""
    from fer_models.predict import Predictor

    clf.batch_size = batch
    t = time.perf_counter()
    if mode == "model":
        n = len(clf.probabilities(crops))
    else:
        recs = []
        Predictor(clf, emit=recs.append).run([folder])
        n = len(recs)
    return time.perf_counter() - t, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="idennet_if_40")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--faces", type=int, default=128, help="faces per timed pass (photos for the pipeline)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the raw timings here")
    args = ap.parse_args(argv)

    import cv2

    import fer_kernels
    from fer_kernels.bench import _cpu_isa_flags, _cpu_model

    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "cpu": _cpu_model(), "cores": os.cpu_count(), "cpu_flags": _cpu_isa_flags(),
           "cpu_isa": fer_kernels.cpu_isa(), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "opencv": cv2.__version__,
           "opencv_threads": cv2.getNumThreads(), "allocator_pinned": ALLOCATOR_PINNED,
           "load_before": os.getloadavg()[0], "command": " ".join(["python", *sys.argv])}
    with tempfile.TemporaryDirectory() as tmp:
        clfs = build(tmp, args.model)
        folder, crops = inputs(tmp, args.faces)
        configs = [(m, b, p) for m in ("model", "pipeline") for b in args.batches for p in ("fused", "eager")]
        time_once("pipeline", clfs["fused"], max(args.batches), folder, crops)  # page cache, cascades
        for p in ("fused", "eager"):  # first calls of each batch size
            for b in args.batches:
                time_once("model", clfs[p], b, folder, crops[: max(b, 2)])
        times = {c: [] for c in configs}
        t0 = time.perf_counter()
        for r in range(args.repeats):
            order = configs[r % len(configs):] + configs[: r % len(configs)]
            for c in order:
                s, n = time_once(c[0], clfs[c[2]], c[1], folder, crops)
                if n != args.faces:
                    raise SystemExit(f"{c}: {n} faces, expected {args.faces}")
                times[c].append(s)
            print(f"repeat {r + 1}/{args.repeats} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    env["load_after"] = os.getloadavg()[0]

    print(f"# {args.model}, {args.faces} faces per pass, {args.repeats} interleaved repeats; {env['date']}")
    print(f"# {env['cpu']} ({env['cores']} cores; {env['cpu_flags']}; fer_kernels ISA {env['cpu_isa']}); "
          f"torch {env['torch']} ({env['torch_threads']} threads), OpenCV {env['opencv']} "
          f"({env['opencv_threads']} threads); allocator pinned: {env['allocator_pinned']}; "
          f"load average {env['load_before']:.2f} before, {env['load_after']:.2f} after")
    print("| faces/s | batch | fused | eager | fused / eager (range) |")
    print("|---|---:|---:|---:|---|")
    rows = []
    for m in ("model", "pipeline"):
        for b in args.batches:
            f, e = times[(m, b, "fused")], times[(m, b, "eager")]
            ratios = sorted(ei / fi for fi, ei in zip(f, e, strict=True))
            row = {"mode": m, "batch": b, "fused_faces_per_s": args.faces / statistics.median(f),
                   "eager_faces_per_s": args.faces / statistics.median(e), "ratio": statistics.median(ratios),
                   "ratio_min": ratios[0], "ratio_max": ratios[-1], "fused_s": f, "eager_s": e}
            rows.append(row)
            label = "model only (crops in)" if m == "model" else "with detection (photo files in)"
            print(f"| {label} | {b} | {row['fused_faces_per_s']:.1f} | {row['eager_faces_per_s']:.1f} | "
                  f"{row['ratio']:.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f}) |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
