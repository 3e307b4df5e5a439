"""fer-experiment: config checks, job planning, the paired statistics, the report, and scheduling end to end
with a stub trainer (a tiny module run in place of fer-train) plus one genuine fer-train fold."""

import json
import math
import os
import signal
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import tomllib
from scipy import stats

from fer_models import experiment
from fer_models.experiment import load_config, paired_comparison, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"

# Stands in for fer-train: same flags, no torch. Accuracy = --acc + --fold-step * fold - 0.1 * (1 - id rate).
# It writes the fold file when absent (slowly, so a second writer would be caught), refuses to start without
# the checkpoints and fold file it is given, fails while --fail-if exists, and logs each call to $STUB_LOG.
STUB = textwrap.dedent('''
    import argparse, json, os, sys, time

    ap = argparse.ArgumentParser()
    for flag in ("--model", "--out", "--folds-file", "--init", "--init-emotion", "--init-identity",
                 "--fail-if", "--exclude-subjects-of", "--dataset", "--target", "--data"):
        ap.add_argument(flag)
    ap.add_argument("--fold", type=int)
    ap.add_argument("--folds", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--workers-threads", type=int)
    ap.add_argument("--id-rate", type=float, default=1.0)
    ap.add_argument("--acc", type=float, default=0.5)
    ap.add_argument("--fold-step", type=float, default=0.0)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--resume", action="store_true")
    a, unknown = ap.parse_known_args()
    t0 = time.time()
    call = {"argv": sys.argv[1:], "start": t0, "end": None, "created": False,
            "threads": os.environ.get("OMP_NUM_THREADS")}

    def log(**kw):
        with open(os.environ["STUB_LOG"], "a") as f:
            f.write(json.dumps(dict(call, **kw)) + "\\n")

    log()
    print("stub: starting", a.out, a.fold, flush=True)
    print("stub: a line on stderr", file=sys.stderr, flush=True)
    for path in (a.init, a.init_emotion, a.init_identity):
        if path and not os.path.isfile(path):
            sys.exit(f"stub: missing checkpoint {path}")
    if a.exclude_subjects_of and not os.path.isfile(a.exclude_subjects_of.rpartition(":")[0]):
        sys.exit("stub: missing fold file " + a.exclude_subjects_of)
    created = False
    if a.folds_file:
        if not os.path.isfile(a.folds_file):
            time.sleep(0.3)
            if os.path.isfile(a.folds_file):
                sys.exit("stub: two jobs wrote the fold file")
            with open(a.folds_file + ".tmp", "w") as f:
                json.dump({"k": a.folds}, f)
            os.replace(a.folds_file + ".tmp", a.folds_file)
            created = True
        with open(a.folds_file) as f:
            assert json.load(f)["k"] == a.folds
    if a.fail_if and os.path.exists(a.fail_if):
        sys.exit("stub: failing because " + a.fail_if + " exists")
    time.sleep(a.sleep)
    d = os.path.join(a.out, f"fold_{a.fold}")
    os.makedirs(os.path.join(d, "checkpoints"), exist_ok=True)
    open(os.path.join(d, "checkpoints", "best.pt"), "w").close()
    acc = a.acc + a.fold_step * a.fold - 0.1 * (1 - a.id_rate)
    metrics = {"accuracy": acc, "fold": a.fold, "classes": ["x", "y", "z", "w"], "selected_epoch": 2,
               "history": [{"train_accuracy": 0.5}, {"train_accuracy": 0.9}]}
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    log(end=time.time(), created=created)
''')

CONFIG = textwrap.dedent('''
    folds = 3
    seed = 7
    baseline = "base"
    title = "Stub grid"
    common = "--dataset synthfer --data D --sleep 0.05"

    [[step]]
    name = "ident"                       # per fold, no subject folds: waits for the fold file
    args = "--dataset identity --model idnet --exclude-subjects-of {folds}:{fold}"

    [[step]]
    name = "emo"
    args = "--model emonet --acc 0.3"

    [[step]]
    name = "once"
    per_fold = false
    replace_common = true
    args = "--dataset identity --model big --data {out}/idents"

    [[variant]]
    name = "base"
    args = "--model m_base --acc 0.60 --init-emotion {ckpt:emo}"

    [[variant]]
    name = "IF"
    args = """--model m_if --acc 0.65 --fold-step 0.01 --init-emotion {ckpt:emo}
              --init-identity {ckpt:ident} --init {ckpt:once}"""
    id_rates = [0, 0.5, 1]
    id_rate_zero = "base"
''')


def _write(path, text):
    path.write_text(text)
    return str(path)


def _main(argv, capsys):
    rc = experiment.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- config and plan ----


def test_config_plan_placeholders_dependencies_and_order(tmp_path):
    exp = load_config(_write(tmp_path / "grid.toml", CONFIG), ["--epochs", "1"])
    assert (exp.folds, exp.seed, exp.baseline, exp.title) == (3, 7, "base", "Stub grid")
    out = str(tmp_path / "exp")
    jobs = plan(exp, out, threads=2)
    labels = [j.label for j in jobs]
    # by fold, then steps before variants in declaration order; the once-step and ID-rate runs in their place
    assert labels[:6] == ["ident fold 0", "emo fold 0", "once", "base fold 0", "IF fold 0", "IF@id0.5 fold 0"]
    assert labels[6:11] == ["ident fold 1", "emo fold 1", "base fold 1", "IF fold 1", "IF@id0.5 fold 1"]
    # once + (ident, emo, base, IF) x 3 folds + IF@id0.5 x 3; no IF@id0 (it is base), no IF@id1 (it is IF)
    assert len(jobs) == 1 + 3 * 4 + 3 * 1
    by = {j.label: j for j in jobs}
    j = by["IF@id0.5 fold 1"]
    a = j.argv
    assert a[:6] == ["--dataset", "synthfer", "--data", "D", "--sleep", "0.05"]  # common first
    assert a[a.index("--init-emotion") + 1] == f"{out}/steps/emo/fold_1/checkpoints/best.pt"
    assert a[a.index("--init-identity") + 1] == f"{out}/steps/ident@fold1/fold_0/checkpoints/best.pt"
    assert a[a.index("--init") + 1] == f"{out}/steps/once/fold_0/checkpoints/best.pt"
    assert a[a.index("--epochs") + 1] == "1"  # the arguments after -- come after the entry's own
    tail = a[a.index("--folds") :]
    assert tail == ["--folds", "3", "--fold", "1", "--folds-file", f"{out}/folds.json", "--seed", "7",
                    "--out", f"{out}/runs/IF@id0.5", "--workers-threads", "2", "--resume", "--id-rate", "0.5"]
    assert sorted(jobs[d].label for d in j.deps) == ["emo fold 1", "ident fold 1", "once"]
    assert j.metrics_path == f"{out}/runs/IF@id0.5/fold_1/metrics.json"
    assert j.log_path == f"{out}/runs/IF@id0.5/fold_1.log"
    # identity steps: --fold 0, no --folds-file, own folder per fold; {folds}/{fold}/{out} expanded
    ident = by["ident fold 2"].argv
    assert ident[ident.index("--exclude-subjects-of") + 1] == f"{out}/folds.json:2"
    assert "--folds-file" not in ident and ident[ident.index("--fold") + 1] == "0"
    assert by["ident fold 2"].out == f"{out}/steps/ident@fold2"
    assert by["ident fold 2"].needs_folds and not by["ident fold 2"].kfold
    once = by["once"].argv
    assert once[:6] == ["--dataset", "identity", "--model", "big", "--data", f"{out}/idents"]  # no common
    assert not by["once"].needs_folds and by["emo fold 0"].kfold
    assert all(jobs[d].fold <= jb.fold for jb in jobs for d in jb.deps)
    # --only: the named variant and the steps it needs, nothing else
    only = plan(exp, out, 1, only=["base"])
    assert sorted({j.name for j in only}) == ["base", "emo"]


BAD_CONFIGS = [
    ("folds = 3\ncolour = 1\n[[variant]]\nname='a'\nargs=''", "unknown key 'colour'"),
    ("[[variant]]\nname='a'\nargs=''\nid_rate=[0.5]", "variant a"),
    ("[[variant]]\nname='a'\nargs=''\nid_rate=[0.5]", "unknown key 'id_rate'"),
    ("[[step]]\nname='s'\nargs=''\nper_folds=false\n[[variant]]\nname='a'\nargs=''",
     "unknown key 'per_folds'"),
    ("baseline='zz'\n[[variant]]\nname='a'\nargs=''", "'baseline' = 'zz' names no variant"),
    ("[[variant]]\nname='a'\nargs='--init {ckpt:nope}'", "{ckpt:nope} names no step"),
    ("[[step]]\nname='a'\nargs=''\n[[variant]]\nname='a'\nargs=''", "duplicate name 'a'"),
    ("[[variant]]\nname='a'\nargs='--x {folder}'", "unknown placeholder {folder}"),
    ("[[variant]]\nname='a'\nargs='--out x'", "--out is set by fer-experiment"),
    ("common='--seed 3'\n[[variant]]\nname='a'\nargs=''", "'common': --seed is set by fer-experiment"),
    ("folds=1\n[[variant]]\nname='a'\nargs=''", "'folds' must be at least 2"),
    ("folds=true\n[[variant]]\nname='a'\nargs=''", "'folds' must be an integer"),
    ("[[variant]]\nname='a'\nargs=''\nid_rates=[1.5]", "'id_rates': expected fractions in [0, 1]"),
    ("[[variant]]\nname='a'\nargs=''\nid_rate_zero='b'", "'id_rate_zero' = 'b' names no other variant"),
    ("[[variant]]\nname='a'\nargs='--id-rate 0.5'\nid_rates=[0.5]", "'id_rates' and --id-rate"),
    ("[[variant]]\nname='a b'\nargs=''", "'name' 'a b'"),
    ("[[variant]]\nname='a'", "missing key 'args'"),
    ("title='x'", "no [[variant]]"),
    ("[[variant]]\nname='a'\nargs='--dataset identity'", "do not use the subject folds"),
    ("[[step]]\nname='s'\nargs='--init {ckpt:t}'\n[[step]]\nname='t'\nargs='--init {ckpt:s}'\n"
     "[[variant]]\nname='a'\nargs=''", "cycle"),
    ("[[step]]\nname='s'\nper_fold=false\nargs=''\n[[variant]]\nname='a'\nargs='--init {ckpt:s}'",
     "step s has per_fold = false but uses the subject folds"),
    ("[[variant]]\nname='a'\nargs='--x \"unclosed'", "'args': No closing quotation"),
    ("[[variant]\nname='a'", "not valid TOML"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_config_errors_are_one_line_naming_the_key(tmp_path, capsys, text, message):
    path = _write(tmp_path / "bad.toml", text)
    rc, out, err = _main(["--config", path, "--out", tmp_path / "o", "--dry-run"], capsys)
    assert rc == 2, out
    assert err.startswith("fer-experiment: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_command_line_errors(tmp_path, capsys):
    cfg = _write(tmp_path / "g.toml", "[[variant]]\nname='a'\nargs=''")
    o = tmp_path / "o"
    cases = [
        (["--models", "m1,m2", "--baseline", "m3"], "--baseline m3: not one of --models"),
        (["--models", "m1,m1"], "--models: duplicate name 'm1'"),
        (["--models", "m1,m2", "--id-rates", "0.5,x"], "--id-rates 0.5,x: expected"),
        (["--models", "m1", "--folds", "1"], "'folds' must be at least 2"),
        (["--config", cfg, "--folds", "3"], "--folds applies to --models"),
        (["--config", cfg, "--only", "zz"], "--only zz: no variant or step"),
        (["--config", cfg, "--baseline", "zz"], "'baseline' = 'zz' names no variant"),
        (["--config", cfg, "--jobs", "0"], "--jobs and --threads must be at least 1"),
        ([], "give --config GRID.toml or --models"),
        (["--config", tmp_path / "missing.toml"], "No such file"),
        (["--models", "m1", "--", "--out", "x"], "arguments after --: --out is set by fer-experiment"),
    ]
    for argv, message in cases:
        cut = argv.index("--") if "--" in argv else len(argv)
        rc, out, err = _main([*argv[:cut], "--out", o, "--dry-run", *argv[cut:]], capsys)
        assert rc == 2 and message in err and err.count("\n") == 1, (argv, err)
    with pytest.raises(SystemExit) as e:  # argparse: one of the two
        experiment.main(["--config", cfg, "--models", "m", "--out", str(o)])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_dry_run_prints_commands_and_dependencies_and_writes_nothing(tmp_path, capsys):
    cfg = _write(tmp_path / "grid.toml", CONFIG)
    o = tmp_path / "exp"
    argv = ["--config", cfg, "--out", o, "--jobs", "2", "--dry-run", "--", "--epochs", "1"]
    rc, out, _ = _main(argv, capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "fer-experiment: 16 jobs (0 done), 3 folds, --jobs 2; baseline base"
    assert "written by the first job that uses the folds (emo fold 0)" in lines[1]
    assert "[ 4] base fold 0  after [2] emo fold 0\n" in out
    assert "[ 1] ident fold 0  (waits for the fold file)" in out
    cmd = next(line for line in lines if f"--out {o}/runs/IF@id0.5 " in line and "--fold 2 " in line)
    assert cmd.strip().startswith(f"{sys.executable} -m fer_models.train --dataset synthfer")
    assert cmd.strip().endswith("--workers-threads 1 --resume --id-rate 0.5")
    assert not o.exists()


def test_models_mode_takes_the_rate_zero_network_from_the_recipe(tmp_path, capsys):
    o = tmp_path / "exp"
    rc, out, _ = _main(["--models", "idennet_original_16,idennet_if_16", "--baseline", "idennet_original_16",
                        "--folds", "2", "--id-rates", "0,0.5,1", "--out", o, "--dry-run", "--",
                        "--dataset", "synthfer", "--epochs", "2"], capsys)
    assert rc == 0
    runs = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    # the original network is --id-rate 0 of IF and is a variant: no IF@id0 run; rate 1 is IF's own run
    assert runs == ["idennet_original_16 fold 0", "idennet_if_16 fold 0", "idennet_if_16@id0.5 fold 0",
                    "idennet_original_16 fold 1", "idennet_if_16 fold 1", "idennet_if_16@id0.5 fold 1"]
    assert "--model idennet_if_16 --dataset synthfer --epochs 2 --folds 2 --fold 1" in out
    args = experiment.build_parser().parse_args(["--models", "idennet_if_16", "--out", "x",
                                                 "--id-rates", "0"])
    exp = experiment.experiment_from_models(args, [])  # baseline itself: no rates, so nothing at rate 0
    assert exp.variants[0].id_rates == []


# ---- statistics ----


def test_paired_comparison_matches_scipy_and_hand_values():
    base = {0: 0.70, 1: 0.60, 2: 0.80, 3: 0.75, 4: 0.65}
    var = {0: 0.74, 1: 0.61, 2: 0.79, 3: 0.80, 4: 0.65, 5: 0.99}  # fold 5 has no baseline: not paired
    c = paired_comparison(var, base)
    d = np.array([4.0, 1.0, -1.0, 5.0, 0.0])  # points
    assert c["folds"] == [0, 1, 2, 3, 4] and c["n"] == 5
    assert math.isclose(c["mean_diff"], 1.8, abs_tol=1e-9)
    sd = math.sqrt(((d - 1.8) ** 2).sum() / 4)  # ddof=1 by hand
    assert math.isclose(c["sd_diff"], sd, rel_tol=1e-9) and math.isclose(sd, 2.588435821, rel_tol=1e-8)
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert math.isclose(half, 2.776445105 * sd / math.sqrt(5), rel_tol=1e-8)
    assert np.allclose(c["ci95"], [1.8 - half, 1.8 + half])
    ref = stats.ttest_rel([var[f] for f in range(5)], [base[f] for f in range(5)])
    assert math.isclose(c["t"], ref.statistic, rel_tol=1e-9)
    assert math.isclose(c["p_t"], ref.pvalue, rel_tol=1e-9)
    assert (c["wins"], c["losses"], c["ties"]) == (3, 1, 1)
    assert math.isclose(c["p_sign"], 0.625)  # P(X<=1)+P(X>=3), X ~ Bin(4, 1/2): (1+4+4+1)/16
    # one pair: a difference, no spread; no pair: nothing
    one = paired_comparison({0: 0.5}, {0: 0.25})
    assert one["mean_diff"] == 25.0 and one["ci95"] is None and one["p_t"] is None and one["p_sign"] == 1.0
    assert paired_comparison({1: 0.5}, {0: 0.5}) is None
    same = paired_comparison({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert same["ties"] == 2 and same["p_t"] is None and same["p_sign"] == 1.0 and same["ci95"] == [0.0, 0.0]
    all_win = paired_comparison({f: 0.9 for f in range(6)}, {f: 0.5 + 0.01 * f for f in range(6)})
    assert all_win["wins"] == 6 and math.isclose(all_win["p_sign"], 2 / 64)


# ---- the report from finished runs ----


def _fake_run(out, name, fold, acc, train=0.9, classes=7):
    d = os.path.join(out, "runs", name, f"fold_{fold}")
    os.makedirs(d, exist_ok=True)
    m = {"accuracy": acc, "fold": fold, "selected_epoch": 3, "classes": [f"c{i}" for i in range(classes)],
         "history": [{"train_accuracy": 0.1}, {"train_accuracy": train}]}
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump(m, f)


def test_report_only_from_a_fabricated_run_tree(tmp_path, capsys):
    cfg = _write(tmp_path / "g.toml", textwrap.dedent("""
        folds = 4
        baseline = "orig"
        title = "Made-up table"
        [[variant]]
        name = "orig"
        args = "--model o"
        [[variant]]
        name = "IF"
        args = "--model if"
        id_rates = [0.5, 1]
        id_rate_zero = "orig"
    """))
    out = str(tmp_path / "exp")
    orig = [0.70, 0.60, 0.80, 0.75]
    iff = [0.74, 0.61, 0.79]  # fold 3 not finished
    half = [0.72, 0.60, 0.80, 0.70]
    for f, a in enumerate(orig):
        _fake_run(out, "orig", f, a, train=0.95)
    for f, a in enumerate(iff):
        _fake_run(out, "IF", f, a, train=0.97)
    for f, a in enumerate(half):
        _fake_run(out, "IF@id0.5", f, a)
    rc, text, err = _main(["--config", cfg, "--out", out, "--report-only"], capsys)
    assert rc == 0, err
    md = open(os.path.join(out, "results.md")).read()
    assert md.startswith("# Made-up table\n")
    assert f"Command: `fer-experiment --config {cfg} --out {out} --report-only`" in md
    assert "Chance level: 14.3% (7 classes)." in md
    table = md.split("\n## ")[0]
    rows = {ln.split(" | ")[0][2:]: ln.split(" | ") for ln in table.splitlines() if ln.startswith("| ")}
    o = rows["orig (baseline)"]
    assert o[2:5] == ["4/4", f"71.2 ± {100 * np.std(orig, ddof=1):.1f}", "95.0"]  # 71.25 -> 71.2 (binary)
    assert f"{100 * np.std(orig, ddof=1):.1f}" == "8.5"
    i = rows["IF"]
    # IF vs orig over folds 0-2: differences +4, +1, -1 points
    d = np.array([4.0, 1.0, -1.0])
    half_w = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    p_t = stats.ttest_rel([0.74, 0.61, 0.79], orig[:3]).pvalue
    ci = f"[{d.mean() - half_w:+.2f}, {d.mean() + half_w:+.2f}]"
    assert i[1:] == ["1", "3/4", "71.3 ± 9.3", "97.0", "+1.33", ci, "3", f"{p_t:.3g}", "2/1/0 (1) |"]
    assert rows["IF@id0.5"][1:5] == ["0.5", "4/4", "70.5 ± 8.2", "90.0"]
    assert "| orig | 70.0 | 60.0 | 80.0 | 75.0 |" in md and "| IF | 74.0 | 61.0 | 79.0 |  |" in md
    assert "| 0 | orig | 4/4 | 71.2 ± 8.5 |" in md and "| 1 | IF | 3/4 | 71.3 ± 9.3 |" in md
    res = json.load(open(os.path.join(out, "results.json")))
    by = {r["name"]: r for r in res["runs"]}
    assert by["IF"]["folds"]["2"]["accuracy"] == 0.79 and "3" not in by["IF"]["folds"]
    assert math.isclose(by["orig"]["std"], np.std(orig, ddof=1))
    assert by["IF"]["vs_baseline"]["folds"] == [0, 1, 2] and by["orig"]["vs_baseline"] is None
    assert [p["run"] for p in res["id_rate_curves"]["IF"]] == ["orig", "IF@id0.5", "IF"]
    for name in ("accuracy.png", "id_rate.png"):
        with open(os.path.join(out, name), "rb") as f:
            data = f.read()
        assert data[:8] == PNG and len(data) > 1000
    assert "| IF | 1 | 3/4 |" in text  # the table is printed too
    # nothing finished: status 1, nothing written
    rc, _, err = _main(["--config", cfg, "--out", tmp_path / "empty", "--report-only"], capsys)
    assert rc == 1 and "no finished runs" in err and not (tmp_path / "empty").exists()


# ---- scheduling end to end with the stub trainer ----


@pytest.fixture
def stub(tmp_path, monkeypatch):
    d = tmp_path / "stubmod"
    d.mkdir()
    (d / "stub_trainer.py").write_text(STUB)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("STUB_LOG", str(log))

    def calls():
        """Every call in start order (a failed one has end None)."""
        got = {}
        for line in log.read_text().splitlines() if log.exists() else []:
            c = json.loads(line)
            got[(c["start"], tuple(c["argv"]))] = c
        return sorted(got.values(), key=lambda c: c["start"])

    return calls


def _flag(argv, flag):
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def test_end_to_end_parallel_dependencies_failure_and_resume(tmp_path, capsys, stub):
    cfg = _write(tmp_path / "grid.toml", CONFIG.replace(
        'args = "--model m_base --acc 0.60', 'args = "--model m_base --acc 0.60 --fail-if {out}/fail_{fold}'))
    out = tmp_path / "exp"
    out.mkdir()
    (out / "fail_1").write_text("")  # base fold 1 fails on the first invocation
    argv = ["--config", cfg, "--out", out, "--jobs", "2", "--threads", "1", "--trainer", "stub_trainer"]
    rc, text, err = _main(argv, capsys)
    assert rc == 1, text + err
    calls = stub()
    assert len(calls) == 16, text
    assert sum(c["created"] for c in calls) == 1  # one job wrote the fold file, before any other used it
    assert all(c["threads"] == "1" and "--resume" in c["argv"] for c in calls)
    # parallel: two jobs overlapped at some time, never more than two
    spans = [(c["start"], c["end"] or c["start"]) for c in calls]
    overlap = max(sum(s <= t0 < e for s, e in spans) for t0, _ in spans)
    assert overlap == 2
    # every job started after the steps it needs ended
    ends = {(_flag(c["argv"], "--out"), _flag(c["argv"], "--fold")): c["end"] for c in calls}
    for c in calls:
        for flag in ("--init-emotion", "--init-identity", "--init"):
            if flag in c["argv"]:
                ckpt = _flag(c["argv"], flag)
                fold_dir = os.path.dirname(os.path.dirname(ckpt))
                run_dir, fold = os.path.dirname(fold_dir), fold_dir.rsplit("_", 1)[1]
                assert ends[(run_dir, fold)] <= c["start"]
    assert "FAILED  base fold 1" in text and "stub: failing because" in text
    assert "stub: a line on stderr" in text  # stdout and stderr both in the log, and its tail printed
    assert "failed: base fold 1" in text and "16 jobs" in text
    assert "test accuracy 65.00%" in text  # IF fold 0
    md = (out / "results.md").read_text()
    assert "| base (baseline) |  | 2/3 |" in md
    res = json.loads((out / "results.json").read_text())
    by = {r["name"]: r for r in res["runs"]}
    assert by["IF"]["folds"]["2"]["accuracy"] == pytest.approx(0.67)
    assert by["IF@id0.5"]["folds"]["1"]["accuracy"] == pytest.approx(0.61)
    assert by["IF"]["vs_baseline"]["folds"] == [0, 2]
    assert (out / "accuracy.png").read_bytes()[:8] == PNG and (out / "id_rate.png").read_bytes()[:8] == PNG
    log = (out / "runs" / "base" / "fold_1.log").read_text()
    assert log.startswith("==== ") and "stub: failing because" in log

    # second invocation: the finished jobs are skipped, the failed one reruns (with --resume) and passes
    os.remove(out / "fail_1")
    rc, text, _ = _main(argv, capsys)
    assert rc == 0, text
    again = stub()[len(calls):]
    rerun = [(_flag(c["argv"], "--out"), _flag(c["argv"], "--fold")) for c in again]
    assert rerun == [(f"{out}/runs/base", "1")]
    assert text.count("from an earlier run") == 15
    md = (out / "results.md").read_text()
    assert "| base (baseline) |  | 3/3 | 60.0 ± 0.0 | 90.0 |" in md
    assert "| IF | 1 | 3/3 | 66.0 ± 1.0 | 90.0 | +6.00 |" in md
    assert log in (out / "runs" / "base" / "fold_1.log").read_text()  # appended, not overwritten


def test_a_failed_step_blocks_what_needs_it(tmp_path, capsys, stub):
    cfg = _write(tmp_path / "g.toml", textwrap.dedent("""
        folds = 2
        [[step]]
        name = "pre"
        args = "--model p --fail-if {out}"
        [[variant]]
        name = "a"
        args = "--model a --init-emotion {ckpt:pre}"
        [[variant]]
        name = "b"
        args = "--model b"
    """))
    out = tmp_path / "exp"
    rc, text, _ = _main(["--config", cfg, "--out", out, "--trainer", "stub_trainer"], capsys)
    assert rc == 1
    assert "FAILED  pre fold 0" in text and "blocked a fold 0: needs pre fold 0, which did not finish" in text
    assert {_flag(c["argv"], "--model") for c in stub()} == {"p", "b"}
    assert "2 not started" in text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_running_jobs(tmp_path, capsys, stub, sig):
    cfg = _write(tmp_path / "g.toml", "folds = 2\n[[variant]]\nname='a'\nargs='--model a --sleep 60'\n")
    out = tmp_path / "exp"

    def interrupt():  # once both jobs run, signal this process as Ctrl-C (or a kill) would
        deadline = time.monotonic() + 20
        while len(stub()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(os.getpid(), sig)

    t = threading.Thread(target=interrupt)
    t.start()
    started = time.monotonic()
    rc, text, err = _main(["--config", cfg, "--out", out, "--jobs", "2", "--trainer", "stub_trainer"], capsys)
    t.join()
    assert rc == 130, text + err
    assert time.monotonic() - started < 15
    assert "interrupted; stopping 2 running job(s)" in err and text.count("stopped a fold") == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    assert not list(out.glob("runs/a/fold_*/metrics.json"))
    for f in (0, 1):  # the children got the interrupt (a KeyboardInterrupt traceback in their logs) and ended
        assert "KeyboardInterrupt" in (out / "runs" / "a" / f"fold_{f}.log").read_text()


def test_console_script_declared():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"]["fer-experiment"] == "fer_models.experiment:main"
    assert "scipy" in project["optional-dependencies"]["train"]


# ---- one genuine fer-train fold ----


@pytest.mark.slow
def test_genuine_fer_train_fold(tmp_path, capsys):
    out = tmp_path / "exp"
    # fold 1 is already "done" (fabricated), so exactly one real fer-train run: fold 0
    _fake_run(str(out), "idennet_original_16", 1, 0.5, classes=6)
    tiny = ["--dataset", "synthfer", "--data", tmp_path / "synth", "--synth-subjects", "4",
            "--synth-frames", "2", "--synth-size", "48", "--epochs", "1", "--epoch-images", "16",
            "--batch-size", "16", "--no-augment", "--val-subjects", "0", "--no-progress"]
    argv = ["--models", "idennet_original_16", "--folds", "2", "--out", out, "--", *tiny]
    rc, text, err = _main(argv, capsys)
    assert rc == 0, text + err
    m = json.loads((out / "runs" / "idennet_original_16" / "fold_0" / "metrics.json").read_text())
    assert m["fold"] == 0 and len(m["classes"]) == 6
    assert (out / "folds.json").is_file()
    assert "done    idennet_original_16 fold 0 in" in text
    md = (out / "results.md").read_text()
    assert "| idennet_original_16 (baseline) | 2/2 |" in md and "Chance level: 16.7% (6 classes)." in md
