"""fer-train / fer-eval / fer-predict / demo end to end on SynthFER with a tiny registered model, exact
resume,
--fold all, two-stage initialisation, and DDP with two CPU processes (torchrun, gloo, loopback)."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tomllib
import torch

from fer_models import demo, evaluate, predict, train
from fer_models.data import write_synthfer
from fer_models.data.protocol import Folds, held_out_subjects

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small conv net that follows the model contract (forward -> .expression / .identity, .loss, .input_size),
# registered the way a user's own model would be: in a module passed to --import.
PLUGIN = textwrap.dedent("""
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F
    from torch import nn

    from fer_models.registry import list_models, register_model


    class TinyNet(nn.Module):
        def __init__(self, num_expressions, num_identities, size=48, variant="IF"):
            super().__init__()
            self.input_size = (1, size, size)
            self.variant = variant
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                nn.AdaptiveAvgPool2d(6), nn.Flatten(), nn.Dropout(0.3))
            self.fc_emo = nn.Linear(12 * 36, num_expressions)
            self.fc_id = nn.Linear(12 * 36, num_identities)

        def forward(self, x):
            h = self.features(x)
            return SimpleNamespace(expression=self.fc_emo(h), identity=self.fc_id(h))

        def loss(self, out, expression, identity):
            e = F.cross_entropy(out.expression, expression)
            known = identity >= 0
            i = (F.cross_entropy(out.identity[known], identity[known]) if bool(known.any())
                 else out.identity.sum() * 0)
            return {"total": e + 0.1 * i, "expression": e, "identity": i}

        @classmethod
        def from_pretrained(cls, emotion_net, identity_net, variant=None, **kw):
            m = cls(variant=variant or "IF", **kw)
            m.features.load_state_dict(emotion_net.features.state_dict())
            m.fed_from = (emotion_net, identity_net)
            return m


    if "tiny_test" not in list_models():
        register_model(lambda **kw: TinyNet(**kw), name="tiny_test")
""")


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model runs fastest on one thread; it also keeps these tests light on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    d = tmp_path_factory.mktemp("plugin")
    (d / "tiny_fer_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(d))
    yield str(d)
    sys.path.remove(str(d))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    write_synthfer(str(d), n_subjects=12, n_frames=4, size=64, difficulty=0.3, seed=0)
    return str(d)


def _args(out, synth, *extra):
    """fer-train's arguments: the tiny model on SynthFER, 4 folds, batch 32, no progress bar; then extra."""
    return ["--import", "tiny_fer_plugin", "--model", "tiny_test", "--dataset", "synthfer", "--data", synth,
            "--out", str(out), "--folds", "4", "--batch-size", "32", "--no-progress", *extra]


def _train(out, synth, *extra):
    return train.main(_args(out, synth, "--lr", "0.05", *extra))


def _json(path):
    with open(path) as f:
        return json.load(f)


def test_train_writes_metrics_confusion_folds_and_checkpoints(tmp_path, synth, plugin, capsys):
    out = tmp_path / "run"
    assert _train(out, synth, "--fold", "1", "--epochs", "1") == 0
    printed = capsys.readouterr().out
    assert "x14" in printed and "img/s" in printed
    m = _json(out / "fold_1" / "metrics.json")
    folds = Folds.load(str(out / "folds.json"))
    assert sorted(m["test_subjects"]) == sorted(folds.folds[1])
    assert not set(m["val_subjects"]) & set(m["test_subjects"]) and m["val_subjects"]
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (6, 6) and cm.sum() == m["num_samples"] == 3 * 6 * 3  # 3 subjects x 6 expr x 3 frames
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    for i, c in enumerate(m["classes"]):
        assert m["per_class_accuracy"][c] == pytest.approx(cm[i, i] / cm[i].sum())
    assert len(m["history"]) == 1 and m["selected_epoch"] == 1
    assert m["history"][0]["images_per_s"] > 0 and m["train_images_per_s"] > 0
    assert (out / "fold_1" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pre = _json(out / "preprocessing.json")
    assert (
        pre["resize"] == [60, 60]
        and pre["train_crop"] == "random 48x48"
        and pre["test_crop"] == "center 48x48"
    )
    assert pre["offline_augmentation"].startswith("14x")
    for name in ("last.pt", "best.pt"):
        ck = torch.load(out / "fold_1" / "checkpoints" / name, weights_only=False)
        assert ck["config"]["model"] == "tiny_test" and ck["config"]["classes"] == m["classes"]
    # fold file reused by a second run (even with another seed), and --fold out of range rejected
    before = (out / "folds.json").read_text()
    assert _train(out, synth, "--fold", "0", "--epochs", "1", "--no-augment", "--seed", "7") == 0
    assert (out / "folds.json").read_text() == before
    assert _train(out, synth, "--fold", "9", "--epochs", "1") == 2


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, synth, plugin):
    common = ("--fold", "0", "--epochs", "3", "--no-augment", "--seed", "3")
    assert _train(tmp_path / "a", synth, *common) == 0
    assert _train(tmp_path / "b", synth, *common, "--stop-after", "1") == 0
    assert not (tmp_path / "b" / "fold_0" / "metrics.json").exists()
    assert torch.load(tmp_path / "b" / "fold_0" / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert _train(tmp_path / "b", synth, *common, "--resume") == 0
    a, b = (
        _json(tmp_path / "a" / "fold_0" / "metrics.json"),
        _json(tmp_path / "b" / "fold_0" / "metrics.json"),
    )
    for key in ("accuracy", "confusion_matrix", "per_class_accuracy", "selected_epoch", "val_accuracy"):
        assert a[key] == b[key], key
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_seconds")} for r in h]  # noqa
    assert strip(a["history"]) == strip(b["history"])
    assert a["history"][0]["train_loss"] != a["history"][2]["train_loss"]  # it did train
    wa = torch.load(tmp_path / "a" / "fold_0" / "checkpoints" / "last.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "b" / "fold_0" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, synth, plugin):
    """A real kill (SIGKILL, no clean-up) right after the first checkpoint, then --resume."""
    import signal
    import time

    common = ["--fold", "0", "--epochs", "3", "--no-augment", "--seed", "5"]
    assert _train(tmp_path / "a", synth, *common) == 0
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([plugin, ROOT, os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    cmd = [
        sys.executable,
        "-c",
        "import sys, torch; torch.set_num_threads(1); from fer_models.train import main; "
        "sys.exit(main(sys.argv[1:]))",
        *_args(tmp_path / "k", synth, "--lr", "0.05", *common),
    ]
    last = tmp_path / "k" / "fold_0" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert last.exists() and not (tmp_path / "k" / "fold_0" / "metrics.json").exists()
    assert torch.load(last, weights_only=False)["epoch"] < 3
    assert _train(tmp_path / "k", synth, *common, "--resume") == 0
    a, k = (
        _json(tmp_path / "a" / "fold_0" / "metrics.json"),
        _json(tmp_path / "k" / "fold_0" / "metrics.json"),
    )
    for key in ("accuracy", "confusion_matrix", "selected_epoch", "val_accuracy"):
        assert a[key] == k[key], key
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in k["history"]]


def test_fold_all_summary(tmp_path, synth, plugin):
    assert _train(tmp_path, synth, "--fold", "all", "--epochs", "1", "--no-augment") == 0
    s = _json(tmp_path / "summary.json")
    accs = [_json(tmp_path / f"fold_{k}" / "metrics.json")["accuracy"] for k in range(4)]
    assert s["fold_accuracy"] == accs
    assert s["accuracy_mean"] == pytest.approx(np.mean(accs)) and s["accuracy_std"] == pytest.approx(
        np.std(accs)
    )
    assert np.array(s["pooled"]["confusion_matrix"]).sum() == 12 * 6 * 3  # every subject tested exactly once


def test_eval_and_predict_reproduce_the_training_metrics(tmp_path, synth, plugin, capsys):
    run = tmp_path / "run"
    assert _train(run, synth, "--fold", "2", "--epochs", "2", "--no-augment") == 0
    ckpt = str(run / "fold_2" / "checkpoints" / "best.pt")
    assert (
        evaluate.main(
            [
                "--checkpoint",
                ckpt,
                "--folds-file",
                str(run / "folds.json"),
                "--fold",
                "2",
                "--out",
                str(tmp_path / "ev"),
                "--import",
                "tiny_fer_plugin",
            ]
        )
        == 0
    )
    ev, tm = _json(tmp_path / "ev" / "metrics.json"), _json(run / "fold_2" / "metrics.json")
    assert ev["confusion_matrix"] == tm["confusion_matrix"] and ev["accuracy"] == tm["accuracy"]
    assert (tmp_path / "ev" / "confusion.png").exists()
    assert "accuracy" in capsys.readouterr().out
    # predict on three images of a test subject and one unreadable file
    subject = tm["test_subjects"][0]
    imgs = [os.path.join(synth, "images", subject, e, "03.png") for e in ("anger", "fear", "surprise")]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    out = tmp_path / "pred.jsonl"
    rc = predict.main(  # SynthFER images are face crops already: no detection
        ["--checkpoint", ckpt, *imgs, str(bad), "--no-detect", "--out", str(out), "--import", "tiny_fer_plugin"]
    )
    assert rc == 1
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in res] == imgs and str(bad) in capsys.readouterr().err
    for r in res[:3]:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["expression"] == max(r["probabilities"], key=r["probabilities"].get)
    # the predictions agree with the evaluated model on the same images
    ck = torch.load(ckpt, weights_only=False)
    from fer_models.data.base import read_gray, resize_gray
    from fer_models.runtime import model_from_checkpoint, predict_logits

    x = torch.from_numpy(np.stack([resize_gray(read_gray(p), 60) for p in imgs]))
    probs = predict_logits(model_from_checkpoint(ck), x, 48, 1, torch.device("cpu")).softmax(1)
    assert [ck["config"]["classes"][i] for i in probs.argmax(1)] == [r["expression"] for r in res[:3]]


def test_two_stage_init(tmp_path, synth, plugin, capsys):
    pre = tmp_path / "pre"
    one = ("--fold", "0", "--epochs", "1", "--no-augment")  # one epoch of fold 0
    assert _train(pre, synth, "--stage", "pretrain", *one) == 0
    ck = str(pre / "fold_0" / "checkpoints" / "best.pt")
    # generic --init: every matching tensor loaded (here all of them: same classes)
    from fer_models.registry import create_model
    from fer_models.train import load_matching

    m = create_model("tiny_test", num_expressions=7, num_identities=5)
    loaded, skipped = load_matching(m, torch.load(ck, weights_only=False)["model"])
    assert "fc_emo.weight" in skipped and "features.0.weight" in loaded
    assert torch.equal(m.features[0].weight, torch.load(ck, weights_only=False)["model"]["features.0.weight"])
    capsys.readouterr()
    assert _train(tmp_path / "ft", synth, "--stage", "finetune", "--init", ck, *one) == 0
    assert "loaded" in capsys.readouterr().out
    assert _train(tmp_path / "ft2", synth, "--stage", "finetune", "--init-emotion", ck, "--init-identity", ck,
                  *one) == 0
    assert "initialised tiny_test from" in capsys.readouterr().out
    # identity pre-training: the classes are the subjects, scored on the identity head, random split
    assert _train(tmp_path / "idp", synth, "--stage", "pretrain", "--target", "identity", *one[2:]) == 0
    mi = _json(tmp_path / "idp" / "fold_0" / "metrics.json")
    assert mi["classes"] == [f"S{i:03d}" for i in range(12)] and np.array(mi["confusion_matrix"]).shape == (
        12,
        12,
    )
    assert _json(tmp_path / "idp" / "preprocessing.json")["protocol"] == "random"
    with pytest.raises(SystemExit, match="needs --init-emotion"):
        _train(tmp_path / "ft3", synth, "--init-identity", ck, *one)
    cfg = _json(tmp_path / "ft2" / "config.json")
    assert cfg["stage"] == "finetune" and cfg["lr"] == 0.05


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Each rank runs fer-train's main, then reports the threads still alive: after an orderly shutdown
# (fer_models.runtime.shutdown_distributed) none of the process group's threads (gloo workers, transport loop)
# and no Python thread but the main one may be left for interpreter teardown, where a rank once aborted with
# "terminate called without an active exception".
RANK_MAIN = textwrap.dedent("""
    import os, sys, threading
    from fer_models import train

    rc = train.main(sys.argv[1:])
    task = "/proc/self/task"
    tids = os.listdir(task) if os.path.isdir(task) else []
    native = sorted(open(f"{task}/{t}/comm").read().strip() for t in tids)
    python = sorted(t.name for t in threading.enumerate())
    line = f"exit threads rank {os.environ['RANK']}: python={python} native={native}\\n"
    os.write(1, line.encode())  # one write: the ranks share the pipe
    sys.exit(rc)
""")


def test_ddp_two_cpu_processes(tmp_path, synth, plugin):
    rank_main = tmp_path / "rank_main.py"
    rank_main.write_text(RANK_MAIN)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([plugin, ROOT, os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        GLOO_SOCKET_IFNAME="lo",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(rank_main),
        *_args(tmp_path, synth, "--fold", "0", "--epochs", "2", "--no-augment"),
    ]
    p = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    m = _json(tmp_path / "fold_0" / "metrics.json")
    assert m["world_size"] == 2 and len(m["history"]) == 2
    assert np.array(m["confusion_matrix"]).sum() == 3 * 6 * 3  # every test image counted once across ranks
    assert p.stdout.count("test accuracy") == 1  # only rank 0 reports and writes
    exits = dict(re.findall(r"exit threads rank (\d): (python=\[[^]]*\] native=\[[^]]*\])", p.stdout))
    assert sorted(exits) == ["0", "1"], p.stdout[-3000:]
    for threads in exits.values():
        assert threads.startswith("python=['MainThread'] ") and "gloo" not in threads, threads


def test_demo_fits_its_plan_to_the_budget_and_reports(tmp_path, plugin, capsys):
    args = ["--model", "tiny_test", "--import", "tiny_fer_plugin", "--out", str(tmp_path), "--subjects", "10"]
    assert demo.main([*args, "--budget-minutes", "0.05", "--no-progress"]) == 0
    out = capsys.readouterr().out
    plan = re.search(r"plan (\d+) epoch\(s\) of (\d+) images drawn from (\d+)", out)
    assert plan, out
    epochs, per_epoch, available = map(int, plan.groups())
    assert available == 9 * 6 * 3 * 14 and per_epoch <= available
    m = _json(tmp_path / "run" / "fold_0" / "metrics.json")
    assert [h["images"] for h in m["history"]] == [per_epoch] * epochs
    assert m["selection"] == "last epoch" and m["num_samples"] == 1 * 6 * 3
    assert "test accuracy" in out and "images/s" in out
    assert os.path.join("run", "fold_0", "confusion.png") in out
    assert (tmp_path / "run" / "fold_0" / "confusion.png").exists()
    assert demo.main(["--model", "no_such_model"]) == 2
    assert "not registered" in capsys.readouterr().err


def test_console_scripts_declared():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    import importlib

    for name in ("fer-train", "fer-eval", "fer-predict", "fer-prep"):
        mod, fn = scripts[name].split(":")
        assert callable(getattr(importlib.import_module(mod), fn))


# ---- checkpoints are data, not code ----


class _Payload:
    """Unpickling this runs code (os.system-like): a tampered checkpoint."""

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Payload.marker),))


def test_checkpoint_with_pickled_payload_is_refused_without_running(tmp_path):
    from fer_models.runtime import CheckpointError, load_checkpoint

    _Payload.marker = str(tmp_path / "payload-ran")
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "extra": _Payload()}, bad)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: not plain data"):
        load_checkpoint(str(bad))
    assert not (tmp_path / "payload-ran").exists(), "the checkpoint's payload ran"


def test_missing_truncated_and_foreign_checkpoints_get_one_line(tmp_path, capsys):
    from fer_models import evaluate, predict
    from fer_models.runtime import CheckpointError, load_checkpoint

    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {"model": "x"}}, good)
    assert load_checkpoint(str(good))["model"]["w"].shape == (2,)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:40])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    for path, match in ((tmp_path / "none.pt", "no such checkpoint file"), (trunc, "unreadable or truncated"),
                        (foreign, "not a fer-train checkpoint")):
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(str(path))
    img = tmp_path / "face.png"
    img.write_bytes(b"")
    assert predict.main(["--checkpoint", str(trunc), str(img)]) == 2
    assert evaluate.main(["--checkpoint", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "trunc.pt" in err[0] and "none.pt" in err[1], err


# ---- recipes, EIFN's flags, ID rate 0, leak-free two-stage protocol ----

# EIFN and EFN at test size (narrow VGG stages, 64x64 input as the paper's) with EIFN's recipes; ID rate 0
# maps tiny_eifn to tiny_efn as the real recipe maps eifn to efn.
EIFN_PLUGIN = textwrap.dedent("""
    from fer_models.eifn import EIFN, RECIPE
    from fer_models.recipes import recipe_for, register_recipe, with_values
    from fer_models.registry import list_models, register_model

    WIDTHS = (4, 4, 8, 8, 8)
    if "tiny_eifn" not in list_models():
        register_model(lambda **kw: EIFN("EIFN", widths=WIDTHS, id_hidden=16, **kw), name="tiny_eifn")
        register_model(lambda **kw: EIFN("EFN", widths=WIDTHS, id_hidden=16, **kw), name="tiny_efn")
        register_recipe("tiny_eifn", with_values(RECIPE, id_rate_zero=lambda name: "tiny_efn"))
        register_recipe("tiny_efn", recipe_for("efn"))
""")
TINY_VGG = (4, 4, 8, 8, 8)


@pytest.fixture(scope="module")
def eifn_plugin(plugin):
    with open(os.path.join(plugin, "tiny_eifn_plugin.py"), "w") as f:
        f.write(EIFN_PLUGIN)
    return plugin


def _eifn(out, synth, *extra):
    """fer-train on tiny_eifn: fold 0 of 4, one short epoch (64 images), no augmentation."""
    return train.main(["--import", "tiny_eifn_plugin", "--model", "tiny_eifn", "--dataset", "synthfer",
                       "--data", synth, "--out", str(out), "--folds", "4", "--fold", "0", "--no-progress",
                       "--no-augment", "--epoch-images", "64", *extra])


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_help_lists_the_recipe_flags_with_their_defaults():
    text = train.build_parser().format_help()
    for flag in ("--vgg16-weights", "--lambdas", "--lr-steps", "--milestones", "--exclude-subjects-of",
                 "--allow-unrecorded-init", "--id-rate"):
        assert flag in text, flag
    flat = " ".join(text.split())
    flat = flat.replace("- ", "-")  # argparse wraps at hyphens: EIFN-BN- slim
    for default in ("EIFN/EFN/EIFN-BN-slim/EFN-BN-slim 100; IDEnNet 128; IPD-FER/DE-GAN 32",
                    "EIFN/EFN/EIFN-BN-slim/EFN-BN-slim 0.0005; IDEnNet 0.0001; IPD-FER/DE-GAN 0;",
                    "EIFN-BN-slim/EFN-BN-slim 0.05", "IPD-FER/DE-GAN 0.001",
                    "IDEnNet 0.01 (pretrain 0.1)", "x0.1 every 20 epochs", "x0.1 at 0.5, 0.75 of the epochs",
                    "lambda1,lambda2,lambda3 = 0.0001,1,6 (--dataset ckplus: 0.0001,2,1)",
                    "id_alpha,id_gamma = 0.1,15", "idennet_original_<depth>",
                    "DE-GAN lambda_rec,lambda_adv,lambda_cls = 1,0.1,0.1"):
        assert default in flat, default


def _resolved(*argv, target="expression"):
    args = train.build_parser().parse_args(list(argv))
    recipe, rows = train.resolve_settings(args, target)
    return args, recipe, dict((k, (v, w)) for k, v, w in rows)


def test_recipes_fill_what_the_command_line_leaves_unset():
    args, recipe, rows = _resolved("--model", "eifn", "--stage", "finetune", "--epochs", "50")
    assert recipe.family == "EIFN"
    assert (args.batch_size, args.lr, args.weight_decay, args.momentum) == (100, 0.01, 5e-4, 0.9)
    assert args.lr_milestones == [20, 40] and args.loss_weights == {"lambda1": 1e-4, "lambda2": 1.0,
                                                                   "lambda3": 6.0}
    assert rows["batch size"][1].startswith("recipe") and rows["epochs"][1] == "command line"
    # the paper's lambdas follow the database a stage trains on: CK+ (0.0001, 2, 1)
    args, _, _ = _resolved("--model", "eifn", "--dataset", "ckplus")
    assert args.loss_weights == {"lambda1": 1e-4, "lambda2": 2.0, "lambda3": 1.0}
    args, _, _ = _resolved("--model", "efn", "--dataset", "ckplus")
    assert args.loss_weights["lambda2"] == 0.0
    args, _, _ = _resolved("--model", "eifn", "--stage", "pretrain")
    assert args.lr_milestones == [] and args.lr == 0.01  # the paper gives pre-training no schedule
    # IDEnNet: 0.1 pre-training / 0.01 fine-tuning, x0.1 at 50% and 75%, batch 128, wd 1e-4
    args, recipe, rows = _resolved("--model", "densenet_bc_16", "--stage", "pretrain", "--epochs", "40",
                                   "--batch-size", "64")
    assert (args.lr, args.lr_milestones, args.batch_size, args.weight_decay) == (0.1, [20, 30], 64, 1e-4)
    assert rows["batch size"][1] == "command line" and args.loss_weights == {}
    args, _, _ = _resolved("--model", "idennet_if_16", "--lambdas", "0.2,10", "--lr-steps", "5,3")
    assert args.loss_weights == {"id_alpha": 0.2, "id_gamma": 10.0} and args.lr_milestones == [3, 5]
    args, _, _ = _resolved("--model", "idennet_if_16", "--milestones")  # no fractions: constant lr
    assert args.lr_milestones == [] and args.lr == 0.01


def test_id_rate_zero_trains_the_baseline_as_in_the_papers_figure():
    for model, base in (("idennet_if_40", "idennet_original_40"), ("idennet_i_16", "idennet_original_16"),
                        ("idennet_f_22", "idennet_original_22"), ("eifn", "efn"), ("eifn_star", "efn")):
        args, recipe, rows = _resolved("--model", model, "--id-rate", "0")
        assert args.model == base and args.requested_model == model and rows["model"][0] == base
    args, _, _ = _resolved("--model", "idennet_if_40", "--id-rate", "0.2")
    assert args.model == "idennet_if_40"
    args, _, _ = _resolved("--model", "idennet_if_40", "--id-rate", "0", target="identity")
    assert args.model == "idennet_if_40"  # identity pre-training: no ID-rate ablation
    with pytest.raises(train.UsageError, match=r"--id-rate 1.5"):
        _resolved("--model", "idennet_if_40", "--id-rate", "1.5")


def test_bad_recipe_flags_get_one_line_and_status_2(tmp_path, synth, eifn_plugin, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    nokeys = tmp_path / "nokeys.pth"
    torch.save({"classifier.0.weight": torch.zeros(2, 2)}, nokeys)
    wide = tmp_path / "vgg16_full.pth"
    torch.save(_vgg16_state((5, 4, 8, 8, 8)), wide)  # conv1 wider than tiny_eifn's
    cases = [
        (("--lambdas", "1,2"),
         r"--lambdas 1,2: tiny_eifn takes 3 loss weights \(lambda1,lambda2,lambda3\), got 2"),
        (("--lambdas", "a,1,1"), r"--lambdas a,1,1: expected comma-separated floats"),
        (("--lambdas", "0.1,-1,1"), r"-1 is not finite and >= 0"),
        (("--lr-steps", "20,x"), r"--lr-steps 20,x: expected comma-separated ints"),
        (("--lr-steps", "0"), r"--lr-steps 0: 0 is not an epoch >= 1"),
        (("--lr-steps", "20", "--milestones", "0.5"), r"give one"),
        (("--milestones", "1.5"), r"--milestones 1.5"),
        (("--vgg16-weights", str(tmp_path / "none.pth")), r"--vgg16-weights .*none\.pth: no such file"),
        (("--vgg16-weights", str(bad)), r"--vgg16-weights .*bad\.pth: not a torch-saved state dict"),
        (("--vgg16-weights", str(nokeys)), r"--vgg16-weights .*nokeys\.pth: no 'features\.N\.weight' keys"),
        (("--vgg16-weights", str(wide)),
         r"--vgg16-weights .*vgg16_full\.pth: VGG-16 weights: features\.0\.weight has shape \(5, 3, 3, 3\)"),
        (("--model", "tiny_efn", "--lambdas", "0.0001,1,6"), r"lambda2: EFN is EIFN with lambda2 = 0"),
        (("--import", "tiny_fer_plugin", "--model", "tiny_test", "--lambdas", "1,1,1"),
         r"tiny_test has no loss weights to set"),
        (("--import", "tiny_fer_plugin", "--model", "tiny_test", "--vgg16-weights", str(nokeys)),
         r"tiny_test has no VGG-16 extractors"),
        (("--exclude-subjects-of", str(tmp_path / "folds.json")), r"expected FOLDS_FILE:FOLD"),
        (("--exclude-subjects-of", f"{tmp_path / 'folds.json'}:0"), r"no such fold file"),
    ]
    for extra, match in cases:
        assert _eifn(tmp_path / "run", synth, *extra) == 2, extra
        line = _err_line(capsys)
        assert line.startswith("fer-train: ") and re.search(match, line), (extra, line)
    assert not (tmp_path / "run" / "fold_0").exists()  # every case stopped before training


def _vgg16_state(widths, seed=3):
    """A torchvision-format VGG-16 state dict (features.N.*, classifier.*) with the given stage widths."""
    g = torch.Generator().manual_seed(seed)
    sd, c, idx = {}, 3, 0
    for width, convs in zip(widths, (2, 2, 3, 3, 3), strict=True):
        for _ in range(convs):
            sd[f"features.{idx}.weight"] = torch.randn(width, c, 3, 3, generator=g) * 0.1
            sd[f"features.{idx}.bias"] = torch.randn(width, generator=g) * 0.01
            c, idx = width, idx + 2
        idx += 1  # the max-pool
    sd["classifier.0.weight"] = torch.zeros(4, 4)
    return sd


def test_eifn_trains_with_its_recipe_vgg16_weights_and_lr_steps(tmp_path, synth, eifn_plugin, capsys):
    sd = _vgg16_state(TINY_VGG)
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    run = tmp_path / "run"
    # lr 0: the extractors keep the loaded weights, so the checkpoint shows what was loaded
    assert _eifn(run, synth, "--vgg16-weights", str(path), "--lr", "0", "--epochs", "1",
                 "--batch-size", "32") == 0
    out = capsys.readouterr().out
    block = out[out.index("recipe EIFN"):]
    rows = {line.split()[0]: line for line in block.splitlines()[1:10]}
    assert "command line" in rows["batch"] and "32" in rows["batch"]
    assert "0.0005" in rows["weight"] and "recipe, sec. 3.1" in rows["weight"]
    assert "lambda1 0.0001, lambda2 1, lambda3 6" in rows["loss"] and "recipe" in rows["loss"]
    assert "x0.1 every 20 epochs" in rows["lr"] or "x0.1 every 20 epochs" in block
    assert "faces 64x64, no crop" in block and f"--vgg16-weights {path}: loaded" in out
    ck = torch.load(run / "fold_0" / "checkpoints" / "last.pt", weights_only=True)
    for ext in ("identity_extractor", "expression_extractor"):
        assert torch.equal(ck["model"][f"{ext}.0.weight"], sd["features.0.weight"])
        assert torch.equal(ck["model"][f"{ext}.28.bias"], sd["features.28.bias"])
    assert ck["config"]["model_kwargs"]["lambda3"] == 6.0
    assert ck["optimizer"]["param_groups"][0]["weight_decay"] == 5e-4
    # --lr-steps 1 over two epochs: 0.01 then 0.001; --lambdas reaches the model
    run2 = tmp_path / "run2"
    assert _eifn(run2, synth, "--epochs", "2", "--lr-steps", "1", "--lambdas", "0.0001,2,1") == 0
    m = _json(run2 / "fold_0" / "metrics.json")
    assert [h["lr"] for h in m["history"]] == pytest.approx([0.01, 0.001])
    cfg = torch.load(run2 / "fold_0" / "checkpoints" / "best.pt", weights_only=True)["config"]
    assert cfg["loss_weights"] == {"lambda1": 1e-4, "lambda2": 2.0, "lambda3": 1.0}
    assert cfg["args"]["lr_milestones"] == [1] and cfg["args"]["batch_size"] == 100


def test_id_rate_zero_run_builds_the_baseline(tmp_path, synth, eifn_plugin, capsys):
    assert _eifn(tmp_path, synth, "--epochs", "1", "--id-rate", "0") == 0
    assert "tiny_efn" in capsys.readouterr().out
    ck = torch.load(tmp_path / "fold_0" / "checkpoints" / "best.pt", weights_only=True)
    assert ck["config"]["model"] == "tiny_efn" and ck["config"]["requested_model"] == "tiny_eifn"
    assert not any(k.startswith("fc1.") for k in ck["model"])  # EFN: no identity branch
    assert ck["config"]["loss_weights"]["lambda2"] == 0.0
    assert _json(tmp_path / "fold_0" / "metrics.json")["model"] == "tiny_efn"


def _folds(synth, path):
    from fer_models.data import load_dataset
    from fer_models.data.protocol import make_folds

    folds = make_folds(load_dataset("synthfer", synth), 4, 0)
    folds.save(str(path))
    return folds


def test_checkpoints_record_their_subjects(tmp_path, synth, plugin):
    folds = _folds(synth, tmp_path / "folds.json")
    assert _train(tmp_path / "r", synth, "--folds-file", str(tmp_path / "folds.json"), "--fold", "2",
                  "--epochs", "1", "--no-augment") == 0
    m = _json(tmp_path / "r" / "fold_2" / "metrics.json")
    for name in ("best.pt", "last.pt"):
        cfg = torch.load(tmp_path / "r" / "fold_2" / "checkpoints" / name, weights_only=True)["config"]
        assert cfg["train_subjects"] == m["train_subjects"] and cfg["val_subjects"] == m["val_subjects"]
        assert cfg["test_subjects"] == folds.folds[2] and cfg["unrecorded_init"] == []
    everyone = sorted(m["train_subjects"] + m["val_subjects"] + m["test_subjects"])
    assert everyone == [f"S{i:03d}" for i in range(12)]


def test_identity_pretraining_excludes_the_fold_and_init_checks_refuse_leaks(tmp_path, synth, plugin, capsys):
    folds = _folds(synth, tmp_path / "folds.json")
    ff = str(tmp_path / "folds.json")
    one = ("--epochs", "1", "--no-augment")
    # identity pre-training on every subject (sample-level split): warned, and its record holds them all
    assert _train(tmp_path / "idall", synth, "--stage", "pretrain", "--target", "identity", *one) == 0
    assert "pre-training on all 12 subjects" in capsys.readouterr().err
    leaky = str(tmp_path / "idall" / "fold_0" / "checkpoints" / "best.pt")
    assert len(torch.load(leaky, weights_only=True)["config"]["train_subjects"]) == 12
    # the same with fold 0's test and validation subjects left out
    assert _train(tmp_path / "id0", synth, "--stage", "pretrain", "--target", "identity",
                  "--exclude-subjects-of", f"{ff}:0", *one) == 0
    clean = str(tmp_path / "id0" / "fold_0" / "checkpoints" / "best.pt")
    held_test, held_val = held_out_subjects(folds, 0, 0.1, 0)
    assert held_test == set(folds.folds[0])
    cfg = torch.load(clean, weights_only=True)["config"]
    assert not set(cfg["train_subjects"]) & (held_test | held_val) and len(cfg["train_subjects"]) == 12 - len(
        held_test | held_val)
    assert cfg["classes"] == cfg["train_subjects"]  # identity classes: the subjects it may see
    # fine-tuning fold 0: the clean checkpoint is accepted; the fine-tuned one inherits its subjects
    emo_run = tmp_path / "emo"
    assert _train(emo_run, synth, "--folds-file", ff, "--fold", "0", "--stage", "pretrain", *one) == 0
    emo = str(emo_run / "fold_0" / "checkpoints" / "best.pt")
    capsys.readouterr()
    ft = tmp_path / "ft0"
    assert _train(ft, synth, "--folds-file", ff, "--fold", "0", "--stage", "finetune", "--init-emotion", emo,
                  "--init-identity", clean, *one) == 0
    assert "warning" not in capsys.readouterr().err
    fcfg = torch.load(ft / "fold_0" / "checkpoints" / "best.pt", weights_only=True)["config"]
    assert set(cfg["train_subjects"]) <= set(fcfg["train_subjects"])
    assert fcfg["init_checkpoints"]["--init-identity"] == os.path.abspath(clean)
    # refused, status 2, one line naming the checkpoint and the overlapping subjects
    for flags, ck, fold in ((("--init-emotion", emo, "--init-identity", leaky), leaky, "0"),
                            (("--init", leaky), leaky, "0"),
                            (("--init", clean), clean, "1"),  # it was pre-trained on fold 1's test subjects
                            (("--init", str(ft / "fold_0" / "checkpoints" / "best.pt")), "ft0", "2")):
        assert _train(tmp_path / "refused", synth, "--folds-file", ff, "--fold", fold, "--stage", "finetune",
                      *flags, *one) == 2, flags
        line = _err_line(capsys)
        test_subjects = folds.folds[int(fold)]
        assert ck in line and "refusing a leaking initialisation" in line and f"fold {fold}'s" in line, line
        assert any(s in line for s in test_subjects), line
    assert not (tmp_path / "refused" / "fold_0").exists() and not (tmp_path / "refused" / "fold_1").exists()
    # a checkpoint trained on a validation subject of the fold is refused too
    crafted = tmp_path / "valleak.pt"
    state = torch.load(clean, weights_only=True)
    state["config"]["train_subjects"] = sorted(held_val)
    torch.save(state, crafted)
    assert _train(tmp_path / "refused", synth, "--folds-file", ff, "--fold", "0", "--init", str(crafted),
                  *one) == 2
    line = _err_line(capsys)
    assert "validation subjects" in line and sorted(held_val)[0] in line
    # an identity pre-training that itself starts from a leaky checkpoint is refused as well
    assert _train(tmp_path / "refused", synth, "--stage", "pretrain", "--target", "identity",
                  "--exclude-subjects-of", f"{ff}:0", "--init", leaky, *one) == 2
    assert f"{ff} fold 0's test subjects" in _err_line(capsys)


def test_unrecorded_init_checkpoint_warns_once_unless_allowed(tmp_path, synth, plugin, capsys):
    _folds(synth, tmp_path / "folds.json")
    ff = str(tmp_path / "folds.json")
    one = ("--folds-file", ff, "--fold", "0", "--epochs", "1", "--no-augment")
    assert _train(tmp_path / "pre", synth, "--stage", "pretrain", *one) == 0
    old = tmp_path / "old.pt"  # as written before fer-train recorded subjects
    state = torch.load(tmp_path / "pre" / "fold_0" / "checkpoints" / "best.pt", weights_only=True)
    for key in ("train_subjects", "val_subjects", "test_subjects", "init_checkpoints", "unrecorded_init"):
        del state["config"][key]
    torch.save(state, old)
    capsys.readouterr()
    assert _train(tmp_path / "ft", synth, "--init", str(old), *one) == 0
    line = _err_line(capsys)
    assert line.startswith("fer-train: warning: --init") and str(old) in line and "does not record" in line
    cfg = torch.load(tmp_path / "ft" / "fold_0" / "checkpoints" / "best.pt", weights_only=True)["config"]
    assert cfg["unrecorded_init"] == [str(old)]
    assert _train(tmp_path / "ft2", synth, "--init", str(old), "--allow-unrecorded-init", *one) == 0
    assert capsys.readouterr().err.strip() == ""
