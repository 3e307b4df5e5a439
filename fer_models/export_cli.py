"""fer-export: a fer-train checkpoint as an ONNX model, checked with onnxruntime against PyTorch.

    fer-export --checkpoint runs/if40/fold_0/checkpoints/best.pt --format onnx --out idennet.onnx

The model is exported through its plain-PyTorch twin (:func:`fer_models.export.export_onnx`; the fused ops are
custom ops ONNX cannot see into), with a dynamic batch dimension: input ``image`` (batch, C, H, W), the
checkpoint's crop size, pixels mapped to [-1, 1] as ``(p / 255 - 0.5) / 0.5``; outputs ``expression`` logits
(and ``identity`` where the model has that head, unless ``--expression-only``). The class names and the
preprocessing are written into the file's metadata (``fer_classes``, ``fer_preprocessing``, JSON). The
exported file is then run with onnxruntime on a random batch and compared with the checkpoint's model as
fer-predict runs it (fused ops, default backend); the largest absolute difference of each output is printed,
and a difference above ``--tolerance`` (relative to the output's largest magnitude) fails the export.

Exit status: 0 when the file is written and agrees; 1 when the export or the check fails; 2 for an unusable
checkpoint, bad arguments or a missing ONNX package (``pip install 'fer-kernels[export]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys

import numpy as np
import torch

from fer_kernels.extras import cli_entry, require
from fer_models.runtime import CheckpointError, import_plugins

PROG = "fer-export"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--checkpoint", required=True, help="a fer-train checkpoint (best.pt)")
    ap.add_argument("--format", default="onnx", choices=("onnx",), help="onnx (the one format so far)")
    ap.add_argument("--out", required=True, help="the file to write (model.onnx)")
    ap.add_argument("--expression-only", action="store_true", help="leave the identity output out")
    ap.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    ap.add_argument("--check-batch", type=int, default=4, metavar="N", help="random batch of the check (4)")
    ap.add_argument("--tolerance", type=float, default=1e-4,
                    help="largest difference allowed, relative to the output's largest magnitude (1e-4)")
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import a module that registers a model (repeatable)")
    return ap


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress prints and warnings, held back (shown only if the export fails)."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield buf
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def export(checkpoint: str, out: str, expression_only: bool = False, opset: int | None = None,
           check_batch: int = 4) -> dict:
    """Write ``out`` and compare onnxruntime with PyTorch; returns ``{"outputs": [...], "max_abs_diff":
    {name: float}, "max_abs": {name: float}}``.

    Raises:
        CheckpointError: the checkpoint cannot be used.
    """
    import onnx
    import onnxruntime as ort

    from fer_models.export import export_onnx
    from fer_models.predict import load_model

    model, cfg = load_model(checkpoint, expression=False)
    channels, crop = int(cfg["channels"]), int(cfg["crop"])
    if tuple(model.input_size) != (channels, crop, crop):  # the model's own input size is what gets traced
        raise CheckpointError(f"{checkpoint}: config says input ({channels}, {crop}, {crop}) but the model "
                              f"records {tuple(model.input_size)}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with _quiet_exporter():
        names = export_onnx(model, out, identity=False if expression_only else None, opset_version=opset)
    proto = onnx.load(out)
    prep = {"grayscale": True, "resize": int(cfg["resize"]), "center_crop": crop, "channels": channels,
            "scale": 1 / 255, "mean": 0.5, "std": 0.5}
    meta = {"fer_classes": json.dumps([str(c) for c in cfg["classes"]]),
            "fer_preprocessing": json.dumps(prep),
            "fer_model": str(cfg["model"]), "fer_target": str(cfg.get("target", "expression"))}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, out)

    x = torch.randn(check_batch, channels, crop, crop, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        res = model.eval()(x)
    want = {"expression": res.expression, "identity": getattr(res, "identity", None)}
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = sess.run(names, {sess.get_inputs()[0].name: x.numpy()})
    diff, scale = {}, {}
    for name, g in zip(names, got, strict=True):
        w = want[name].float().numpy()
        diff[name] = float(np.abs(g - w).max())
        scale[name] = float(np.abs(w).max())
    return {"outputs": names, "max_abs_diff": diff, "max_abs": scale}


@cli_entry(PROG, extra="export")
def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.check_batch < 1:
        ap.error("--check-batch must be at least 1")
    require(PROG, "export", "onnx", "onnxscript", "onnxruntime")
    import_plugins(args.imports)
    try:
        res = export(args.checkpoint, args.out, args.expression_only, args.opset, args.check_batch)
    except CheckpointError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the exporter's or onnxruntime's error: one line, the file named
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        print(f"{PROG}: {args.checkpoint}: export to {args.out} failed ({type(exc).__name__}: {first})",
              file=sys.stderr)
        return 1
    parts = ", ".join(f"{n} {res['max_abs_diff'][n]:.2e} (outputs up to {res['max_abs'][n]:.3g})"
                      for n in res["outputs"])
    print(f"{PROG}: wrote {args.out}; onnxruntime vs PyTorch on a random batch of {args.check_batch}: "
          f"max |difference| {parts}")
    bad = [n for n in res["outputs"] if res["max_abs_diff"][n] > args.tolerance * max(res["max_abs"][n], 1.0)]
    if bad:
        print(f"{PROG}: {args.out}: onnxruntime disagrees with PyTorch on {', '.join(bad)} beyond "
              f"--tolerance {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
