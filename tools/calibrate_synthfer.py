"""Calibrate SynthFER: how much does knowing who the subject is help, on subjects never seen in training?

A small CNN (three conv-BN-ReLU-pool stages, global average pooling, a two-layer head) is trained on each of
k subject folds twice, from the same initial weights and the same batches: once plain, and once with the
*oracle* identity code from ``subjects.json`` (zeros for the plain CNN): ``--code resting`` (default) the
subject's resting face (the seven action values its neutral face shows), ``geometry`` its hidden 16-d geometry
code, ``both`` the two joined; each dimension standardised over the subjects; or ``neutral``, no code but each
image's neutral frame as a second input channel (zeros for the plain CNN): can a network learn from pixels
what the code says? ``--fusion concat`` (default) joins the code to the pooled features before the head; ``film``
scales and shifts each pooled feature by a linear function of the code. ``--code-noise S`` adds Gaussian
noise of std S to the oracle's code in training, so the head cannot memorise the few training subjects'
codes. The oracle gap (oracle minus plain test accuracy, paired by fold) is what an identity-aware model
could gain from perfect identity features; the plain accuracy shows how far the task is from saturation.

    python tools/calibrate_synthfer.py --data runs/data/synthfer_v2 --subjects 200 --epochs 30 --code-noise 0.3 \
        --jobs 2 --out calib.json

It calibrates SynthFER v2, the version that writes the oracle codes (``subjects.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_models.data import FaceDataset, load_images, make_folds, write_synthfer
from fer_models.data.protocol import split_fold
from fer_models.data.synthfer import read_synthfer


class SmallCNN(nn.Module):
    """``fusion`` says how the oracle's code enters: ``concat`` (joined to the pooled features before the
    two-layer head) or ``film`` (the code scales and shifts each pooled feature linearly, then the same head):
    the plain CNN gets a zero code, which makes both fusions the identity."""

    def __init__(self, classes: int, code_dim: int, fusion: str = "concat", in_channels: int = 1):
        super().__init__()
        chans = (in_channels, 32, 64, 128)
        layers = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.code_dim = code_dim
        self.fusion = fusion
        extra = code_dim if fusion == "concat" else 0
        if fusion == "film":
            self.film = nn.Linear(code_dim, 2 * 128, bias=False)
        self.head = nn.Sequential(nn.Linear(128 + extra, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, classes))

    def forward(self, x, code):
        f = self.features(x).mean((2, 3))
        if self.fusion == "film":
            scale, shift = self.film(code).chunk(2, 1)
            return self.head(f * (1 + scale) + shift)
        return self.head(torch.cat([f, code], 1))


def _batch(images, idx, gen, train, see_neutral=True):
    """Images (N, H, W), or (N, 2, H, W) with the neutral frame second (zeroed unless ``see_neutral``)."""
    x = images[idx].float().div(255.0).sub(0.5).div(0.25)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif not see_neutral:
        x[:, 1:] = 0.0
    if train:  # random shifts of up to 3 pixels and horizontal flips
        pad = F.pad(x, (3, 3, 3, 3), mode="replicate")
        dx, dy = torch.randint(0, 7, (2,), generator=gen).tolist()
        x = pad[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(3)
    return x


def run_fold(images, labels, codes, train_idx, test_idx, oracle, epochs, seed, classes, batch=32, fusion="concat",
             code_noise=0.0):
    torch.manual_seed(seed)
    model = SmallCNN(classes, codes.shape[1], fusion, 1 if images.dim() == 3 else images.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * int(np.ceil(len(train_idx) / batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)
    code_in = codes if oracle else torch.zeros_like(codes)
    correct = seen = 0
    for _ in range(epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        correct = seen = 0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            code = code_in[idx]
            if oracle and code_noise > 0:  # so the head cannot memorise the few training subjects' codes
                code = code + code_noise * torch.randn(code.shape, generator=gen)
            logits = model(_batch(images, idx, gen, True, oracle), code)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == labels[idx]).sum())
            seen += len(idx)
    model.eval()
    with torch.no_grad():
        pred = model(_batch(images, test_idx, None, False, oracle), code_in[test_idx]).argmax(1)
    return float((pred == labels[test_idx]).float().mean()), correct / max(seen, 1)


def _fold_job(a, k: int) -> dict:
    """Train the plain and the oracle CNN on fold ``k`` of ``a.data``; their test and training accuracies."""
    torch.set_num_threads(a.threads)
    with open(os.path.join(a.data, "subjects.json")) as f:  # written by SynthFER v2 only
        truth = json.load(f)
    ds = read_synthfer(a.data)
    ds, imgs = load_images(ds, a.size)
    images = torch.from_numpy(imgs)
    labels = torch.tensor([s.expression for s in ds.samples])
    if a.code == "neutral":  # the oracle sees each image's neutral frame (second channel); no code
        _, neutral = load_images(FaceDataset(ds.name, ds.classes, [
            dataclasses.replace(s, path=s.neutral, pixels=None) for s in ds.samples]), a.size, strict=True)
        images = torch.from_numpy(np.stack([imgs, neutral], 1))
    keys = {"resting": ("resting",), "geometry": ("code",), "both": ("code", "resting"), "neutral": ()}[a.code]
    subjects = sorted(truth)
    table = np.array([sum((list(truth[s][key]) for key in keys), []) for s in subjects]).reshape(len(subjects), -1)
    table = (table - table.mean(0)) / np.maximum(table.std(0), 1e-12)  # each dimension standardised
    row = {s: i for i, s in enumerate(subjects)}
    codes = torch.tensor(table[[row[s.subject] for s in ds.samples]], dtype=torch.float32)
    folds = make_folds(ds, a.folds, a.seed)
    pos = {id(s): i for i, s in enumerate(ds.samples)}
    t0 = time.perf_counter()
    train, _, test = split_fold(ds, folds, k, 0.0, a.seed)
    tr = torch.tensor([pos[id(s)] for s in train.samples])
    te = torch.tensor([pos[id(s)] for s in test.samples])
    res = {"fold": k}
    for oracle in (False, True):
        acc, train_acc = run_fold(images, labels, codes, tr, te, oracle, a.epochs, a.seed * 100 + k, 6,
                                  fusion=a.fusion, code_noise=a.code_noise)
        res["oracle" if oracle else "plain"] = acc
        res[("oracle" if oracle else "plain") + "_train"] = train_acc
    print(f"fold {k}: plain {res['plain']:.3f} (train {res['plain_train']:.3f})  oracle {res['oracle']:.3f} "
          f"(train {res['oracle_train']:.3f})  [{time.perf_counter() - t0:.0f} s]", flush=True)
    return res


def action_ceiling(a, ds, folds, noise: float = 0.1, steps: int = 1500) -> dict:
    """The same subject folds in action space: a one-hidden-layer MLP on the true facial actions and geometry
    code of the images the CNN sees (the samples of ``ds``: everything one image shows, plus reading noise of
    std ``noise`` on the actions), without and with the subject's resting face; prints each fold. What perfect
    perception of one expressive image could reach, and what knowing the subject's neutral face adds to it."""
    from fer_models.data.base import BASIC6
    from fer_models.data.synthfer import true_actions

    t = true_actions(a.subjects, 6, a.difficulty, a.seed)
    seen = {(s.sequence, s.frame) for s in ds.samples}
    keep = np.array([(f"S{s:03d}_{BASIC6[e]}", int(f)) in seen
                     for s, e, f in zip(t["subject"], t["expression"], t["frame"], strict=True)])
    gen = torch.Generator().manual_seed(a.seed)
    x = torch.tensor(t["actions"][keep], dtype=torch.float32)
    x = x + noise * torch.randn(x.shape, generator=gen)
    x = torch.cat([x, torch.tensor(t["code"][keep], dtype=torch.float32)], 1)
    rest = torch.tensor(t["resting"][keep], dtype=torch.float32)
    y = torch.tensor(t["expression"][keep])
    names = np.array([f"S{s:03d}" for s in t["subject"][keep]])

    def fit(xs, tr, te):
        torch.manual_seed(a.seed)
        mlp = nn.Sequential(nn.Linear(xs.shape[1], 64), nn.ReLU(), nn.Linear(64, 6))
        opt = torch.optim.Adam(mlp.parameters(), 1e-2, weight_decay=1e-4)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(mlp(xs[tr]), y[tr]).backward()
            opt.step()
        with torch.no_grad():
            return float((mlp(xs[te]).argmax(1) == y[te]).float().mean())

    rows = []
    for k, test_subjects in enumerate(folds.folds):
        te = torch.from_numpy(np.isin(names, test_subjects))
        rows.append({"fold": k, "one_image": fit(x, ~te, te), "with_resting": fit(torch.cat([x, rest], 1), ~te, te)})
        print(f"fold {k}: one image {100 * rows[-1]['one_image']:.1f}%  with the resting face "
              f"{100 * rows[-1]['with_resting']:.1f}%", flush=True)
    c = {"noise": noise, "folds": rows,
         "one_image_mean": float(np.mean([r["one_image"] for r in rows])),
         "with_resting_mean": float(np.mean([r["with_resting"] for r in rows]))}
    print(f"action-space ceiling: {100 * c['one_image_mean']:.1f}% from one image (actions and geometry), "
          f"{100 * c['with_resting_mean']:.1f}% with the resting face")
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="SynthFER folder (generated there if absent)")
    ap.add_argument("--subjects", type=int, default=200)
    ap.add_argument("--difficulty", type=float, default=None)
    ap.add_argument("--size", type=int, default=48, help="image side the CNN sees")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fusion", choices=("concat", "film"), default="concat", help="how the oracle's code enters")
    ap.add_argument("--code", choices=("resting", "geometry", "both", "neutral"), default="resting",
                    help="what the oracle knows about the subject: its resting face, geometry code or both "
                         "(subjects.json), or, with neutral, each image's neutral frame as a second channel")
    ap.add_argument("--code-noise", type=float, default=0.0, help="std of noise added to the code in training")
    ap.add_argument("--jobs", type=int, default=1, help="folds trained at once, one process each")
    ap.add_argument("--only-folds", default=None, help="comma-separated folds to run (default: all)")
    ap.add_argument("--out", default=None, help="write the results here (JSON)")
    ap.add_argument("--ceiling", action="store_true",
                    help="also the action-space ceiling: an MLP on the true actions and geometry, without and with "
                         "the resting face (about a minute)")
    ap.add_argument("--ceiling-only", action="store_true", help="the action-space ceiling alone, no CNN")
    a = ap.parse_args(argv)
    write_synthfer(a.data, a.subjects, 6, 64, a.difficulty, a.seed, version=2)
    ds = read_synthfer(a.data)
    folds = make_folds(ds, a.folds, a.seed)
    n_folds = folds.k
    if a.ceiling_only:
        torch.set_num_threads(a.threads)
        c = action_ceiling(a, ds, folds)
        if a.out:
            with open(a.out, "w") as f:
                json.dump({"data": a.data, "ceiling": c, "command": " ".join(sys.argv)}, f, indent=1)
        return 0
    only = list(range(n_folds)) if a.only_folds is None else [int(k) for k in a.only_folds.split(",")]
    t0 = time.perf_counter()
    if a.jobs > 1:  # one process per fold (spawned: each loads the data itself), a.jobs at a time
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as pool:
            rows = list(pool.map(_fold_job, [a] * len(only), only))
    else:
        rows = [_fold_job(a, k) for k in only]
    from scipy import stats

    plain = np.array([r["plain"] for r in rows])
    oracle = np.array([r["oracle"] for r in rows])
    diff = oracle - plain
    def sd(v):  # sample std; nan for one fold (no spread to estimate), without numpy's warning
        return float(v.std(ddof=1)) if len(v) > 1 else float("nan")

    half = stats.t.ppf(0.975, len(diff) - 1) * sd(diff) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    summary = {
        "data": a.data,
        "folds": a.folds,
        "epochs": a.epochs,
        "fusion": a.fusion,
        "code": a.code,
        "code_noise": a.code_noise,
        "plain_mean": plain.mean(),
        "plain_std": sd(plain),
        "plain_train_mean": float(np.mean([r["plain_train"] for r in rows])),
        "oracle_mean": oracle.mean(),
        "oracle_std": sd(oracle),
        "oracle_train_mean": float(np.mean([r["oracle_train"] for r in rows])),
        "gap_mean": diff.mean(),
        "gap_ci95": [diff.mean() - half, diff.mean() + half],
        "paired_t_p": float(stats.ttest_rel(oracle, plain).pvalue) if len(diff) > 1 else None,
        "folds_detail": rows,
        "seconds": time.perf_counter() - t0,
        "command": " ".join(sys.argv),
    }
    print(
        f"plain {100 * plain.mean():.1f} +- {100 * sd(plain):.1f}  oracle {100 * oracle.mean():.1f} +- "
        f"{100 * sd(oracle):.1f}  gap {100 * diff.mean():.1f} points, 95% CI "
        f"[{100 * summary['gap_ci95'][0]:.1f}, {100 * summary['gap_ci95'][1]:.1f}]"
    )
    if a.ceiling:
        torch.set_num_threads(a.threads)
        summary["ceiling"] = action_ceiling(a, ds, folds)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
