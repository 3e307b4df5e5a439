"""fer-experiment: run a grid of fer-train runs over the subject folds and report them as the papers do.

    fer-experiment --config grid.toml --out runs/exp --jobs 2
    fer-experiment --models idennet_original_16,idennet_if_16 --baseline idennet_original_16 --folds 5 \\
                   --out runs/exp --id-rates 0,0.5,1 --jobs 2 -- --dataset synthfer --data D --epochs 5

Every job is one ``fer-train`` process (``python -m fer_models.train``) for one fold of one step or variant.
Its command line is, in this order (argparse keeps the last value, so later arguments override earlier ones):
the config's ``common`` (unless the entry sets ``replace_common = true``), the entry's ``args``, the
arguments after ``--``, then what fer-experiment sets itself: ``--folds K --fold F --folds-file OUT/folds.json
--seed S --out DIR --workers-threads T --resume`` (and ``--id-rate R`` for an ID-rate run). ``args`` and
``common`` must not set those flags themselves.

A config (TOML):

    folds = 5                      # k subject folds; one fold file OUT/folds.json for every run
    seed = 0
    baseline = "original"          # every other variant is compared with it fold by fold (default: first)
    title = "IDEnNet on SynthFER"
    common = "--dataset synthfer --data runs/data/synthfer --epochs 8 --val-subjects 0 --no-progress"

    [[step]]                       # a preparation run: not in the tables; its checkpoint is {ckpt:NAME}
    name = "identity_net"          # per fold, leaving the fold's test subjects out of identity pre-training
    args = '''--model densenet_bc_identity_16 --stage pretrain --target identity
              --exclude-subjects-of {folds}:{fold}'''

    [[step]]
    name = "emotion_net"
    args = "--model densenet_bc_16 --stage pretrain"

    [[variant]]
    name = "original"
    args = "--model idennet_original_16 --stage finetune --init-emotion {ckpt:emotion_net}"

    [[variant]]
    name = "IF"
    args = '''--model idennet_if_16 --stage finetune --init-emotion {ckpt:emotion_net}
              --init-identity {ckpt:identity_net}'''
    id_rates = [0, 0.25, 0.5, 0.75, 1]   # one run per rate: the ID-rate curve
    id_rate_zero = "original"            # its rate-0 point is this variant's runs (not re-run)

Keys. Top level: ``folds`` (int >= 2, default 10), ``seed`` (int, 0), ``baseline``, ``title``, ``common``
(a string split like a shell line, newlines included, or a list of strings), ``step`` and ``variant``
(arrays of tables).
``[[step]]``: ``name``, ``args``, ``per_fold`` (default true; false: one run, fold 0), ``replace_common``,
``kfold``. ``[[variant]]``: ``name``, ``args``, ``replace_common``, ``kfold``, ``id_rates``, ``id_rate_zero``.
``kfold`` says whether the run uses the subject folds (fer-train's kfold protocol); by default it is worked
out as fer-train's ``--protocol auto`` does: not for ``--dataset identity``, ``--target identity``,
``--dataset fer2013/ferplus`` or ``--protocol random/split``, else yes. Variants must use the folds. Names
are letters, digits and ``._+-``, unique over steps and variants.

Placeholders in ``args``, ``common`` and the arguments after ``--``: ``{fold}`` (the fold F),
``{out}`` (OUT), ``{folds}`` (OUT/folds.json), ``{ckpt:NAME}`` (step NAME's best checkpoint for this fold:
``OUT/steps/NAME/fold_F/checkpoints/best.pt``; fold 0 for a ``per_fold = false`` step). A job waits for
every step its ``{ckpt:...}`` names. A per-fold job may not use a once-run step that uses the folds: trained
on fold 0's training subjects, it has seen every other fold's test subjects (fer-train would refuse it).

Run directories. Variant V: ``OUT/runs/V`` (an ID-rate run: ``OUT/runs/V@idR``), fer-train ``--fold F``,
so fold F's results are ``OUT/runs/V/fold_F/metrics.json``. A step S that uses the folds: ``OUT/steps/S``
with ``--fold F`` (once: fold 0). A per-fold step that does not use the folds (identity pre-training, whose
split is random): ``OUT/steps/S@foldF`` with ``--fold 0`` (its checkpoint is ``OUT/steps/S@foldF/fold_0/
checkpoints/best.pt``); a once-run one: ``OUT/steps/S``, ``--fold 0``. Each job's output goes to
``DIR/fold_N.log`` (appended to on a rerun).

Scheduling. Jobs are ordered by fold, then steps before variants in declaration order (so early folds
finish first), and run ``--jobs`` at a time, a job starting once the steps it depends on are done. The fold
file OUT/folds.json is written by fer-train when absent; until it exists only one job that needs it runs
(the others that need it wait; jobs that do not use the folds start meanwhile). A job is done when its
``metrics.json`` exists: a rerun of the same command skips it, and runs every other job with ``--resume``
(fer-train continues from ``last.pt``), so a failed or interrupted experiment is resumed by running the same
command again. A failed job (non-zero exit) is reported with the tail of its log; the others go on, and the
jobs that depend on it are not started. Exit status: 0 all done, 1 a job failed, 2 a bad config or command
line, 130 interrupted (Ctrl-C stops the running fer-train processes; nothing finished is lost).

ID rates. ``id_rates`` (or ``--id-rates``) adds one run per rate, passing ``--id-rate R`` (the fraction of
training subjects whose identity label is used, IDEnNet's Fig. 3). The variant's own run (fer-train's
default ``--id-rate 1``) is its rate-1 point, so a rate of 1 adds no run. Rate 0 means the family's baseline
network without identity information (IDEnNet Fig. 3's rate-0 point is the Original Network): fer-train
``--id-rate 0`` trains exactly that model (IDEnNet I/F/IF -> ``idennet_original_<depth>``, EIFN -> ``efn``),
so when that network is already a variant, name it in ``id_rate_zero`` and its runs are the rate-0 point
instead of training it again. With ``--models``, ``--id-rates`` applies to every model but the baseline, and
the rate-0 point is the model fer-train's ``--id-rate 0`` would train when that model is in ``--models``.

Report (from the runs' ``metrics.json``; the tables rewritten after every job, the figures at most every
30 s while jobs run, and all of it at the end):
``OUT/results.md``: one row per variant and ID rate: folds done, test accuracy mean +- std over folds (%,
std with ddof=1), final training accuracy, and the comparison with the baseline over the folds both have:
mean difference in points with its 95% confidence interval (Student t, n-1 degrees of freedom), the paired
t-test p-value and the sign test (wins/losses/ties, two-sided binomial p over the non-tied folds); the chance
level, per-fold accuracies, the steps' accuracies, the title and the command line. ``OUT/results.json``:
every run's per-fold numbers and the statistics. ``OUT/accuracy.png``: mean accuracy per variant with std
error bars, the folds as points and the chance level; ``OUT/id_rate.png`` (with ID rates): accuracy against
ID rate.

``--dry-run`` prints the jobs (commands, dependencies, which are done) and exits; ``--report-only`` rebuilds
the report from the finished runs; ``--only NAME ...`` runs the named variants (or steps) and the steps they
need.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from fer_kernels.extras import cli_entry, require

TRAINER = "fer_models.train"
PROG = "fer-experiment"
# flags fer-experiment sets on every fer-train command line (a config may not)
DRIVER_FLAGS = ("--out", "--fold", "--folds", "--folds-file", "--seed", "--resume", "--workers-threads")
NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
TOP_KEYS = {"folds", "seed", "baseline", "title", "common", "step", "variant"}
STEP_KEYS = {"name", "args", "per_fold", "replace_common", "kfold"}
VARIANT_KEYS = {"name", "args", "replace_common", "kfold", "id_rates", "id_rate_zero"}
TAIL_LINES = 15
POLL_S = 0.1
PLOT_EVERY_S = 30.0  # while jobs run, the figures are redrawn at most this often (the tables after every job)


class ConfigError(ValueError):
    """A config or command line fer-experiment cannot use: one line, exit status 2."""


# --------------------------------------------------------------------------------------------- config
@dataclass
class Entry:
    """A ``[[step]]`` or ``[[variant]]`` as declared."""

    kind: str  # "step" | "variant"
    name: str
    args: list[str]
    per_fold: bool = True
    replace_common: bool = False
    kfold: bool | None = None
    id_rates: list[float] = field(default_factory=list)
    id_rate_zero: str | None = None


@dataclass
class Experiment:
    folds: int
    seed: int
    baseline: str
    title: str
    common: list[str]
    steps: list[Entry]
    variants: list[Entry]
    extra: list[str] = field(default_factory=list)

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.steps + self.variants if e.name == name), None)


def _words(value, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a string or a list of strings")


def _typed(table: dict, key: str, kind, where: str, default=None):
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python; not to a config
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        names = " or ".join({int: "an integer", bool: "true or false", str: "a string", list: "a list"}[k]
                            for k in kinds)
        raise ConfigError(f"{where}: '{key}' must be {names}, not {value!r}")
    return value


def _rates(values, where: str) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ConfigError(f"{where}: expected fractions in [0, 1], got {v!r}")
        if float(v) in out:
            raise ConfigError(f"{where}: rate {v:g} given twice")
        out.append(float(v))
    return sorted(out)


def _entry(table, kind: str, i: int, src: str) -> Entry:
    where = f"{src}: {kind}[{i}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table ([[{kind}]])")
    name = _typed(table, "name", str, where)
    if name is None:
        raise ConfigError(f"{where}: missing key 'name'")
    if not NAME_RE.match(name):
        raise ConfigError(f"{where}: 'name' {name!r}: use letters, digits and ._+- only")
    where = f"{src}: {kind} {name}"
    allowed = STEP_KEYS if kind == "step" else VARIANT_KEYS
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
    if "args" not in table:
        raise ConfigError(f"{where}: missing key 'args'")
    e = Entry(kind, name, _words(table["args"], f"{where}: 'args'"))
    e.replace_common = _typed(table, "replace_common", bool, where, False)
    e.kfold = _typed(table, "kfold", bool, where)
    if kind == "step":
        e.per_fold = _typed(table, "per_fold", bool, where, True)
    else:
        e.id_rates = _rates(_typed(table, "id_rates", list, where, []), f"{where}: 'id_rates'")
        e.id_rate_zero = _typed(table, "id_rate_zero", str, where)
    return e


def load_config(path: str, extra: list[str]) -> Experiment:
    """Read and check a TOML config (see the module docstring); raises :class:`ConfigError`."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError("a TOML config needs Python 3.11 (tomllib) or the tomli package") from None
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(TOP_KEYS))})")
    steps = [_entry(t, "step", i, path) for i, t in enumerate(_typed(raw, "step", list, path, []))]
    variants = [_entry(t, "variant", i, path) for i, t in enumerate(_typed(raw, "variant", list, path, []))]
    if not variants:
        raise ConfigError(f"{path}: no [[variant]]: nothing to compare")
    exp = Experiment(
        folds=_typed(raw, "folds", int, path, 10),
        seed=_typed(raw, "seed", int, path, 0),
        baseline=_typed(raw, "baseline", str, path, variants[0].name),
        title=_typed(raw, "title", str, path, ""),
        common=_words(raw.get("common", []), f"{path}: 'common'"),
        steps=steps,
        variants=variants,
        extra=list(extra),
    )
    check(exp, path)
    return exp


def _uses_kfold(words: list[str]) -> bool:
    """Whether a fer-train command line uses the subject folds, as fer-train's ``--protocol auto`` decides."""
    protocol, dataset = _last(words, "--protocol"), _last(words, "--dataset")
    target = _last(words, "--target")
    if protocol and protocol != "auto":
        return protocol == "kfold"
    if (target or ("identity" if dataset == "identity" else "expression")) == "identity":
        return False
    return dataset not in ("fer2013", "ferplus")


def _last(words: list[str], flag: str) -> str | None:
    value = None
    for i, w in enumerate(words):
        if w == flag and i + 1 < len(words):
            value = words[i + 1]
        elif w.startswith(flag + "="):
            value = w[len(flag) + 1 :]
    return value


def _has(words: list[str], flag: str) -> bool:
    return any(w == flag or w.startswith(flag + "=") for w in words)


def _refs(words: list[str], where: str) -> list[str]:
    """The step names ``{ckpt:NAME}`` refers to in ``words``; any other unknown placeholder raises."""
    refs = []
    for w in words:
        for m in PLACEHOLDER_RE.finditer(w):
            key = m.group(1)
            if key.startswith("ckpt:"):
                refs.append(key[5:])
            elif key not in ("fold", "out", "folds"):
                known = "{fold}, {out}, {folds}, {ckpt:NAME}"
                raise ConfigError(f"{where}: unknown placeholder {{{key}}} (known: {known})")
    return refs


def words_of(exp: Experiment, e: Entry) -> list[str]:
    """The entry's fer-train arguments before expansion: common (unless replaced) + args + extra."""
    return ([] if e.replace_common else exp.common) + e.args + exp.extra


def kfold_of(exp: Experiment, e: Entry) -> bool:
    return e.kfold if e.kfold is not None else _uses_kfold(words_of(exp, e))


def check(exp: Experiment, src: str) -> None:
    """Every cross-reference of the experiment; raises :class:`ConfigError` naming the key."""
    if exp.folds < 2:
        raise ConfigError(f"{src}: 'folds' must be at least 2, not {exp.folds}")
    seen = set()
    for e in exp.steps + exp.variants:
        if e.name in seen:
            raise ConfigError(f"{src}: duplicate name '{e.name}' (names are unique over steps and variants)")
        seen.add(e.name)
    if exp.entry(exp.baseline) is None or exp.entry(exp.baseline).kind != "variant":
        raise ConfigError(
            f"{src}: 'baseline' = {exp.baseline!r} names no variant "
            f"(variants: {', '.join(v.name for v in exp.variants)})"
        )
    for where, words in (("'common'", exp.common), ("arguments after --", exp.extra)):
        for flag in DRIVER_FLAGS:
            if _has(words, flag):
                raise ConfigError(f"{src}: {where}: {flag} is set by fer-experiment ({_driver_hint(flag)})")
        _refs(words, f"{src}: {where}")
    steps = {s.name: s for s in exp.steps}
    for e in exp.steps + exp.variants:
        where = f"{src}: {e.kind} {e.name}"
        for flag in DRIVER_FLAGS:
            if _has(e.args, flag):
                raise ConfigError(f"{where}: 'args': {flag} is set by fer-experiment ({_driver_hint(flag)})")
        for ref in _refs(words_of(exp, e), where):
            if ref not in steps:
                raise ConfigError(
                    f"{where}: {{ckpt:{ref}}} names no step (steps: {', '.join(steps) or 'none'})"
                )
            if ref == e.name:
                raise ConfigError(f"{where}: {{ckpt:{ref}}} refers to the step itself")
            s = steps[ref]
            if (e.kind == "variant" or e.per_fold) and not s.per_fold and kfold_of(exp, s):
                raise ConfigError(
                    f"{where}: {{ckpt:{ref}}}: step {ref} has per_fold = false but uses the subject folds: "
                    f"trained on fold 0's training subjects, it has seen every other fold's test subjects "
                    f"(make it per_fold)"
                )
        if e.kind == "variant":
            if not kfold_of(exp, e):
                raise ConfigError(
                    f"{where}: its runs do not use the subject folds (dataset/protocol/target), but variants "
                    f"are compared fold by fold (set 'kfold' = true if fer-train does use them)"
                )
            if e.id_rates and _has(words_of(exp, e), "--id-rate"):
                raise ConfigError(f"{where}: 'id_rates' and --id-rate in the arguments: give the rates once")
            if e.id_rate_zero is not None:
                z = exp.entry(e.id_rate_zero)
                if z is None or z.kind != "variant" or z is e:
                    raise ConfigError(
                        f"{where}: 'id_rate_zero' = {e.id_rate_zero!r} names no other variant"
                    )
    _check_cycles(exp, steps, src)


def _check_cycles(exp: Experiment, steps: dict[str, Entry], src: str) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise ConfigError(f"{src}: step {name}: {{ckpt:...}} references form a cycle: "
                              + " -> ".join(cycle))
        state[name] = 1
        for ref in _refs(words_of(exp, steps[name]), src):
            visit(ref, path + [name])
        state[name] = 2

    for name in steps:
        visit(name, [])


def _driver_hint(flag: str) -> str:
    return {
        "--folds": "use 'folds' / --folds",
        "--seed": "use 'seed' / --seed",
        "--workers-threads": "use --threads",
        "--out": "runs go under --out",
    }.get(flag, "per job")


def experiment_from_models(args, extra: list[str]) -> Experiment:
    """The experiment ``--models A,B --baseline A [--id-rates ...] -- ARGS`` describes."""
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names:
        raise ConfigError("--models: expected comma-separated model names")
    dup = next((m for m in names if names.count(m) > 1), None)
    if dup:
        raise ConfigError(f"--models: duplicate name '{dup}'")
    for m in names:
        if not NAME_RE.match(m):
            raise ConfigError(f"--models: {m!r}: use letters, digits and ._+- only")
    baseline = args.baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"--baseline {baseline}: not one of --models ({', '.join(names)})")
    rates = []
    if args.id_rates is not None:
        try:
            values = [float(r) for r in args.id_rates.split(",") if r.strip()]
        except ValueError:
            raise ConfigError(f"--id-rates {args.id_rates}: expected comma-separated fractions") from None
        rates = _rates(values, "--id-rates")
    variants = [Entry("variant", m, ["--model", m]) for m in names]
    if rates:
        zero = _rate_zero_models(names) if 0.0 in rates else {}
        for v in variants:
            if v.name != baseline:
                v.id_rates = list(rates)
                v.id_rate_zero = zero.get(v.name)
    exp = Experiment(
        folds=args.folds if args.folds is not None else 10,
        seed=args.seed if args.seed is not None else 0,
        baseline=baseline,
        title=args.title or "",
        common=[],
        steps=[],
        variants=variants,
        extra=list(extra),
    )
    check(exp, "--models")
    return exp


def _rate_zero_models(names: list[str]) -> dict[str, str]:
    """model -> the model of ``names`` that fer-train trains for it at ``--id-rate 0`` (its recipe's
    ``id_rate_zero``), for the models whose rate-0 network is in ``names``."""
    import fer_models  # noqa: F401  (registers the models and their recipes)
    from fer_models.recipes import recipe_for

    out = {}
    for m in names:
        recipe = recipe_for(m)
        base = recipe.id_rate_zero(m) if recipe and recipe.id_rate_zero else None
        if base and base != m and base in names:
            out[m] = base
    return out


# ----------------------------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One fer-train process: one fold of one step or variant (or of one ID rate of a variant)."""

    name: str  # run name: the entry's name, "V@idR" for an ID-rate run
    entry: Entry
    fold: int  # the experiment's fold
    id_rate: float | None
    out: str  # fer-train --out
    train_fold: int  # the fold_N directory fer-train writes (0 for runs that do not use the folds)
    argv: list[str] = field(default_factory=list)
    deps: list[int] = field(default_factory=list)
    kfold: bool = False  # uses the subject folds: fer-train writes OUT/folds.json if it is absent
    needs_folds: bool = False  # cannot start before OUT/folds.json exists (kfold, or names the file)

    @property
    def label(self) -> str:
        return f"{self.name} fold {self.fold}" if self.entry.per_fold else self.name

    @property
    def fold_dir(self) -> str:
        return os.path.join(self.out, f"fold_{self.train_fold}")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.fold_dir, "metrics.json")

    @property
    def log_path(self) -> str:
        return os.path.join(self.out, f"fold_{self.train_fold}.log")

    @property
    def checkpoint(self) -> str:
        return os.path.join(self.fold_dir, "checkpoints", "best.pt")

    def done(self) -> bool:
        return os.path.isfile(self.metrics_path)

    def command(self, trainer: str) -> list[str]:
        return [sys.executable, "-m", trainer, *self.argv]


def rate_name(variant: str, rate: float) -> str:
    return f"{variant}@id{rate:g}"


def rate_runs(v: Entry) -> list[float]:
    """The rates of ``v`` that get runs of their own (rate 1 is the variant's own run; rate 0 is
    ``id_rate_zero``'s runs when set)."""
    return [r for r in v.id_rates if r != 1.0 and not (r == 0.0 and v.id_rate_zero)]


def _location(exp: Experiment, e: Entry, fold: int, out: str, name: str | None = None) -> tuple[str, int]:
    """``(fer-train --out, its fold_N)`` of entry ``e``'s job for ``fold``."""
    if e.kind == "variant":
        return os.path.join(out, "runs", name or e.name), fold
    if not e.per_fold:
        return os.path.join(out, "steps", e.name), 0
    if kfold_of(exp, e):
        return os.path.join(out, "steps", e.name), fold
    return os.path.join(out, "steps", f"{e.name}@fold{fold}"), 0


def expand(word: str, exp: Experiment, fold: int, out: str) -> str:
    def sub(m):
        key = m.group(1)
        if key == "fold":
            return str(fold)
        if key == "out":
            return out
        if key == "folds":
            return os.path.join(out, "folds.json")
        step = exp.entry(key[5:])
        d, f = _location(exp, step, fold if step.per_fold else 0, out)
        return os.path.join(d, f"fold_{f}", "checkpoints", "best.pt")

    return PLACEHOLDER_RE.sub(sub, word)


def plan(exp: Experiment, out: str, threads: int, only: list[str] | None = None) -> list[Job]:
    """Every job of the experiment in run order (fold, then declaration order), with its fer-train
    arguments and the indices of the jobs it waits for."""
    out = os.path.normpath(out)
    folds_file = os.path.join(out, "folds.json")
    wanted = None
    if only:
        wanted = set()
        todo = list(only)
        while todo:
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo += _refs(words_of(exp, exp.entry(name)), name)
    entries = [e for e in exp.steps + exp.variants if wanted is None or e.name in wanted]
    rows = []  # (fold, declaration order, rate order, job)
    for order, e in enumerate(entries):
        kfold = kfold_of(exp, e)
        runs = [(e.name, None)] + ([(rate_name(e.name, r), r) for r in rate_runs(e)] if e.kind == "variant"
                                   else [])
        for fold in range(exp.folds) if e.per_fold else [0]:
            for k, (name, rate) in enumerate(runs):
                d, train_fold = _location(exp, e, fold, out, name)
                words = [expand(w, exp, fold, out) for w in words_of(exp, e)]
                argv = words + ["--folds", str(exp.folds), "--fold", str(train_fold)]
                if kfold:
                    argv += ["--folds-file", folds_file]
                argv += ["--seed", str(exp.seed), "--out", d, "--workers-threads", str(threads), "--resume"]
                if rate is not None:
                    argv += ["--id-rate", f"{rate:g}"]
                job = Job(name, e, fold, rate, d, train_fold, argv, kfold=kfold)
                job.needs_folds = kfold or any(folds_file in w for w in words)
                rows.append((fold, order, k, job))
    rows.sort(key=lambda r: r[:3])
    jobs = [r[3] for r in rows]
    index = {(j.entry.name, j.fold): i for i, j in enumerate(jobs) if j.entry.kind == "step"}
    for j in jobs:
        for ref in dict.fromkeys(_refs(words_of(exp, j.entry), j.name)):
            step = exp.entry(ref)
            j.deps.append(index[(ref, j.fold if step.per_fold else 0)])
    return jobs


# ------------------------------------------------------------------------------------------ scheduling
def _elapsed(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _accuracy_text(job: Job) -> str:
    m = _read_json(job.metrics_path) or {}
    acc = m.get("accuracy")
    if not isinstance(acc, (int, float)):
        return "no accuracy in metrics.json"
    return f"test accuracy {100 * acc:.2f}%"


def _tail(path: str, offset: int, n: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    # progress bars rewrite their line with \r: keep what a terminal would show last
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return [line for line in lines if line.strip()][-n:]


class _Stop(Exception):
    """SIGTERM: stop like Ctrl-C."""


def run_jobs(jobs: list[Job], out: str, n_jobs: int, threads: int, trainer: str, on_finish=None) -> int:
    """Run ``jobs`` (see :func:`plan`) ``n_jobs`` at a time; returns the exit status (0, 1 or 130)."""
    folds_file = os.path.join(os.path.normpath(out), "folds.json")
    n = len(jobs)
    width = len(str(n))
    tag = lambda i: f"[{i + 1:>{width}}/{n}]"  # noqa: E731
    state = {}
    for i, j in enumerate(jobs):
        if j.done():
            state[i] = "done"
            print(f"{tag(i)} done    {j.label} ({_accuracy_text(j)}, from an earlier run)", flush=True)
        else:
            state[i] = "pending"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    running: dict[int, tuple[subprocess.Popen, float, int]] = {}
    creator = None  # the job allowed to write the fold file while it does not exist
    ran, failed, t_start = 0, [], time.perf_counter()
    try:
        while True:
            for i, j in enumerate(jobs):
                if state[i] == "pending" and any(state[d] in ("failed", "blocked") for d in j.deps):
                    state[i] = "blocked"
                    bad = ", ".join(jobs[d].label for d in j.deps if state[d] in ("failed", "blocked"))
                    print(f"{tag(i)} blocked {j.label}: needs {bad}, which did not finish", flush=True)
            folds_ready = os.path.isfile(folds_file)
            for i, j in enumerate(jobs):
                if len(running) >= n_jobs:
                    break
                if state[i] != "pending" or any(state[d] != "done" for d in j.deps):
                    continue
                if j.needs_folds and not folds_ready:
                    if creator is not None or not j.kfold:  # one kfold job writes it; the rest wait
                        continue
                    creator = i
                os.makedirs(j.out, exist_ok=True)
                with open(j.log_path, "ab") as log:
                    offset = log.tell()
                    header = f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(j.command(trainer))}\n"
                    log.write(header.encode())
                    log.flush()
                    proc = subprocess.Popen(
                        j.command(trainer),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        start_new_session=True,  # Ctrl-C reaches fer-experiment, which stops them
                    )
                state[i] = "running"
                running[i] = (proc, time.perf_counter(), offset + len(header.encode()))
                deps = f" after {', '.join(jobs[d].label for d in j.deps)}" if j.deps else ""
                print(f"{tag(i)} start   {j.label}{deps} -> {j.log_path}", flush=True)
            if not running:
                break  # what is still pending waits for a fold file that no job left can write
            time.sleep(POLL_S)
            finished = [i for i, (p, _, _) in running.items() if p.poll() is not None]
            for i in finished:
                proc, t0, offset = running.pop(i)
                j, took = jobs[i], time.perf_counter() - t0
                ran += 1
                if i == creator:
                    creator = None
                if proc.returncode == 0 and j.done():
                    state[i] = "done"
                    print(f"{tag(i)} done    {j.label} in {_elapsed(took)}: {_accuracy_text(j)}", flush=True)
                else:
                    state[i] = "failed"
                    failed.append(i)
                    why = f"exit status {proc.returncode}" if proc.returncode else "exit 0, no metrics.json"
                    print(f"{tag(i)} FAILED  {j.label} after {_elapsed(took)} ({why}); "
                          f"last lines of {j.log_path}:", flush=True)
                    for line in _tail(j.log_path, offset):
                        print(f"    | {line}", flush=True)
            if finished and on_finish is not None:
                on_finish()
    except (KeyboardInterrupt, _Stop):
        print(f"\n{PROG}: interrupted; stopping {len(running)} running job(s)", file=sys.stderr, flush=True)
        _stop(running)
        for i in running:
            print(f"{tag(i)} stopped {jobs[i].label}", flush=True)
        print(f"{PROG}: run the same command again to resume", file=sys.stderr, flush=True)
        return 130
    for i, j in enumerate(jobs):
        if state[i] == "pending":
            print(f"{tag(i)} blocked {j.label}: needs {folds_file}, which no job of this run writes",
                  flush=True)
    done = sum(1 for s in state.values() if s == "done")
    blocked = sum(1 for s in state.values() if s in ("blocked", "pending"))
    print(
        f"{PROG}: {n} jobs in {_elapsed(time.perf_counter() - t_start)}: {done} done ({ran - len(failed)} "
        f"run now), {len(failed)} failed, {blocked} not started",
        flush=True,
    )
    for i in failed:
        print(f"  failed: {jobs[i].label}: {jobs[i].log_path}", flush=True)
    return 1 if failed or blocked else 0


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the job's own session: fer-train and anything it started (torchrun)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(running: dict, grace_s: float = 10.0) -> None:
    """SIGINT each running job (fer-train stops as on Ctrl-C); SIGKILL what is left after ``grace_s`` or at
    a second Ctrl-C."""
    procs = [proc for proc, _, _ in running.values()]
    for proc in procs:
        _signal_group(proc, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    try:
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    except (KeyboardInterrupt, _Stop):
        pass
    for proc in procs:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def print_plan(jobs: list[Job], trainer: str, n_jobs: int, exp: Experiment, out: str) -> None:
    n_done = sum(j.done() for j in jobs)
    creator = next((j for j in jobs if j.kfold and not j.done()), None)
    folds_file = os.path.join(os.path.normpath(out), "folds.json")
    print(f"{PROG}: {len(jobs)} jobs ({n_done} done), {exp.folds} folds, --jobs {n_jobs}; "
          f"baseline {exp.baseline}")
    if os.path.isfile(folds_file):
        print(f"fold file: {folds_file} (exists)")
    elif creator is not None:
        print(f"fold file: {folds_file}, written by the first job that uses the folds ({creator.label}) "
              "before the other jobs that need it start")
    width = len(str(len(jobs)))
    for i, j in enumerate(jobs):
        deps = f"  after {', '.join(f'[{d + 1}] {jobs[d].label}' for d in j.deps)}" if j.deps else ""
        status = "  (done)" if j.done() else ("  (waits for the fold file)" if j.needs_folds and not j.kfold
                                               else "")
        print(f"[{i + 1:>{width}}] {j.label}{deps}{status}")
        print(f"    {shlex.join(j.command(trainer))}")


# --------------------------------------------------------------------------------------------- report
def paired_comparison(variant: dict[int, float], baseline: dict[int, float]) -> dict | None:
    """Compare per-fold accuracies (fractions) with the baseline's over the folds both have.

    Returns None without common folds, else ``folds`` (the paired folds), ``n``, ``mean_diff`` (points),
    ``sd_diff`` (points, ddof=1), ``ci95`` ([low, high] points: mean +- t(0.975, n-1) sd/sqrt(n)), ``t``,
    ``p_t`` (paired t-test, two-sided), ``wins``/``losses``/``ties`` and ``p_sign`` (two-sided exact binomial
    test of wins among the non-tied folds). What needs two folds (or a nonzero sd) is None without them.
    """
    from scipy import stats

    folds = sorted(set(variant) & set(baseline))
    if not folds:
        return None
    d = np.array([variant[f] - baseline[f] for f in folds], dtype=np.float64) * 100.0
    n = len(d)
    res = {"folds": folds, "n": n, "mean_diff": float(d.mean()), "sd_diff": None, "ci95": None, "t": None,
           "p_t": None}
    if n >= 2:
        sd = float(d.std(ddof=1))
        se = sd / math.sqrt(n)
        half = float(stats.t.ppf(0.975, n - 1)) * se
        res.update(sd_diff=sd, ci95=[res["mean_diff"] - half, res["mean_diff"] + half])
        if se > 0:
            t = res["mean_diff"] / se
            res.update(t=t, p_t=float(2 * stats.t.sf(abs(t), n - 1)))
    tol = 1e-9
    wins, losses = int((d > tol).sum()), int((d < -tol).sum())
    res.update(wins=wins, losses=losses, ties=n - wins - losses)
    res["p_sign"] = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    return res


def _mean_std(values) -> tuple[float | None, float | None]:
    a = np.asarray(list(values), dtype=np.float64)
    if not len(a):
        return None, None
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def _fold_metrics(run_dir: str, k: int) -> dict[int, dict]:
    """Per fold: accuracy, final training accuracy, selected epoch and class count of a variant's run."""
    got = {}
    for f in range(k):
        m = _read_json(os.path.join(run_dir, f"fold_{f}", "metrics.json"))
        if not m or not isinstance(m.get("accuracy"), (int, float)):
            continue
        hist = m.get("history") or []
        classes = m.get("classes") or list(m.get("per_class_accuracy") or {})
        got[f] = {
            "accuracy": float(m["accuracy"]),
            "train_accuracy": hist[-1].get("train_accuracy") if hist and isinstance(hist[-1], dict) else None,
            "selected_epoch": m.get("selected_epoch"),
            "classes": len(classes) or None,
        }
    return got


def collect(exp: Experiment, out: str, command: str) -> dict:
    """Every finished run's per-fold numbers and the statistics of the report (results.json)."""
    out = os.path.normpath(out)
    rows = []
    for v in exp.variants:
        names = [(v.name, 1.0 if v.id_rates or v.id_rate_zero else None)]
        names += [(rate_name(v.name, r), r) for r in rate_runs(v)]  # ascending
        for name, rate in names:
            d = os.path.join(out, "runs", name)
            rows.append({"name": name, "variant": v.name, "id_rate": rate, "dir": d,
                         "folds": _fold_metrics(d, exp.folds)})
    base = next(r for r in rows if r["name"] == exp.baseline)
    base_acc = {f: m["accuracy"] for f, m in base["folds"].items()}
    classes = set()
    for r in rows:
        acc = {f: m["accuracy"] for f, m in r["folds"].items()}
        r["mean"], r["std"] = _mean_std(acc.values())
        r["train_accuracy_mean"], _ = _mean_std(
            m["train_accuracy"] for m in r["folds"].values() if m["train_accuracy"] is not None
        )
        r["vs_baseline"] = None if r is base else paired_comparison(acc, base_acc)
        classes |= {m["classes"] for m in r["folds"].values() if m["classes"]}
    steps = []
    for s in exp.steps:
        folds = range(exp.folds) if s.per_fold else [0]
        got = {}
        for f in folds:
            d, tf = _location(exp, s, f, out)
            m = _read_json(os.path.join(d, f"fold_{tf}", "metrics.json"))
            if m and isinstance(m.get("accuracy"), (int, float)):
                got[f] = float(m["accuracy"])
        steps.append({"name": s.name, "per_fold": s.per_fold, "fold_accuracy": got})
    curves = {}
    for v in exp.variants:
        if not v.id_rates and not v.id_rate_zero:
            continue
        points = []
        if v.id_rate_zero:
            points.append({"id_rate": 0.0, "run": v.id_rate_zero})
        points += [{"id_rate": r["id_rate"], "run": r["name"]} for r in rows
                   if r["variant"] == v.name and r["id_rate"] is not None]
        curves[v.name] = sorted(points, key=lambda p: p["id_rate"])
    n_classes = classes.pop() if len(classes) == 1 else None
    return {
        "title": exp.title,
        "command": command,
        "out": out,
        "folds": exp.folds,
        "seed": exp.seed,
        "baseline": exp.baseline,
        "chance": {"classes": n_classes, "accuracy": 1.0 / n_classes} if n_classes else None,
        "runs": rows,
        "steps": steps,
        "id_rate_curves": curves,
    }


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"


def _p(p: float | None) -> str:
    return "–" if p is None else ("<0.001" if p < 0.001 else f"{p:.3g}")


def _rate_text(rate: float | None) -> str:
    return "" if rate is None else f"{rate:g}"


def markdown(res: dict) -> str:
    k, base = res["folds"], res["baseline"]
    has_rates = any(r["id_rate"] is not None for r in res["runs"]) or bool(res["id_rate_curves"])
    lines = [f"# {res['title'] or 'fer-experiment: ' + res['out']}", "", f"Command: `{res['command']}`", ""]
    folds_file = os.path.join(res["out"], "folds.json")
    lines.append(
        f"Subject-independent {k}-fold cross validation (fold file `{folds_file}`, seed {res['seed']}). "
        "Test accuracy in percent, mean ± std over the folds done (std with ddof=1); training accuracy of "
        f"the last epoch. Each variant is compared with the baseline **{base}** over the folds both have: "
        "mean difference in points with its 95% confidence interval (Student t, n-1 degrees of freedom), "
        "the paired t-test's two-sided p, and the sign test: wins/losses/ties against the baseline and "
        "the two-sided binomial p over the folds that are not ties."
    )
    if res["chance"]:
        chance = res["chance"]
        lines += ["", f"Chance level: {_pct(chance['accuracy'])}% ({chance['classes']} classes)."]
    if has_rates:
        lines += ["", "ID rate: fraction of training subjects whose identity label is used (fer-train "
                  "--id-rate); a variant's own run is its rate 1; rate 0 is the family's baseline network "
                  "without identity information."]
    head = ["Variant"] + (["ID rate"] if has_rates else []) + [
        "Folds", "Accuracy (%)", "Train acc. (%)", f"Δ vs {base} (points)", "95% CI", "Pairs",
        "Paired t p", "Sign test W/L/T (p)"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["runs"]:
        acc = "–" if r["mean"] is None else (
            f"{_pct(r['mean'])} ± {_pct(r['std'])}" if r["std"] is not None else _pct(r["mean"]))
        cells = [r["name"] + (" (baseline)" if r["name"] == base else "")]
        cells += [_rate_text(r["id_rate"])] if has_rates else []
        cells += [f"{len(r['folds'])}/{k}", acc, _pct(r["train_accuracy_mean"])]
        c = r["vs_baseline"]
        if c is None:
            cells += ["–"] * 5
        else:
            ci = "–" if c["ci95"] is None else f"[{_signed(c['ci95'][0])}, {_signed(c['ci95'][1])}]"
            cells += [_signed(c["mean_diff"]), ci, str(c["n"]), _p(c["p_t"]),
                      f"{c['wins']}/{c['losses']}/{c['ties']} ({_p(c['p_sign'])})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Test accuracy per fold (%)", "",
              "| Run | " + " | ".join(f"fold {f}" for f in range(k)) + " |", "|" + "---|" * (k + 1)]
    for r in res["runs"]:
        lines.append(f"| {r['name']} | " + " | ".join(
            _pct(r["folds"][f]["accuracy"]) if f in r["folds"] else "" for f in range(k)) + " |")
    for name, points in res["id_rate_curves"].items():
        by_name = {r["name"]: r for r in res["runs"]}
        lines += ["", f"## ID rate: {name}", "", "| ID rate | Run | Folds | Accuracy (%) |",
                  "|---|---|---|---|"]
        for p in points:
            r = by_name.get(p["run"])
            acc = "–" if r is None or r["mean"] is None else f"{_pct(r['mean'])} ± {_pct(r['std'])}"
            n = 0 if r is None else len(r["folds"])
            lines.append(f"| {p['id_rate']:g} | {p['run']} | {n}/{k} | {acc} |")
    if res["steps"]:
        lines += ["", "## Preparation steps (their own test accuracy, %)", "", "| Step | Folds | Accuracy |",
                  "|---|---|---|"]
        for s in res["steps"]:
            want = k if s["per_fold"] else 1
            mean, std = _mean_std(s["fold_accuracy"].values())
            acc = "–" if mean is None else (_pct(mean) + (f" ± {_pct(std)}" if std is not None else ""))
            lines.append(f"| {s['name']} | {len(s['fold_accuracy'])}/{want} | {acc} |")
    return "\n".join(lines) + "\n"


def _plot_accuracy(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [r for r in res["runs"] if r["mean"] is not None and (r["id_rate"] is None or r["id_rate"] == 1.0)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 2), 4.2))
    x = np.arange(len(rows))
    means = [100 * r["mean"] for r in rows]
    stds = [100 * (r["std"] or 0.0) for r in rows]
    colors = ["#999999" if r["name"] == res["baseline"] else "#4477aa" for r in rows]
    ax.bar(x, means, yerr=stds, capsize=5, color=colors, alpha=0.85, zorder=2)
    top = max(means + [0.0])
    for i, r in enumerate(rows):
        accs = [100 * r["folds"][f]["accuracy"] for f in sorted(r["folds"])]
        jitter = np.linspace(-0.22, 0.22, len(accs)) if len(accs) > 1 else np.zeros(1)
        ax.scatter(i + jitter, accs, s=14, color="black", alpha=0.7, zorder=3)
        top = max([top] + accs)
    if res["chance"]:
        c = 100 * res["chance"]["accuracy"]
        ax.axhline(c, ls="--", color="#cc3311", lw=1, zorder=4, label=f"chance {c:.1f}%")
        ax.legend(loc="lower right", fontsize=8)
    names = [r["name"] + (" (baseline)" if r["name"] == res["baseline"] else "")
             + f"\n{len(r['folds'])}/{res['folds']} folds" for r in rows]
    tilt = len(rows) > 4
    ax.set_xticks(x, names, rotation=20 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, min(100.0, top + 8))
    ax.set_title(res["title"] or "fer-experiment", fontsize=10)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_id_rate(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    by_name = {r["name"]: r for r in res["runs"]}
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for i, (name, points) in enumerate(res["id_rate_curves"].items()):
        color = f"C{i}"
        xs, ys, es = [], [], []
        for p in points:
            r = by_name.get(p["run"])
            if r is None or r["mean"] is None:
                continue
            xs.append(p["id_rate"])
            ys.append(100 * r["mean"])
            es.append(100 * (r["std"] or 0.0))
            accs = [100 * m["accuracy"] for m in r["folds"].values()]
            ax.scatter([p["id_rate"]] * len(accs), accs, s=10, color=color, alpha=0.25)
        if xs:
            zero = next((p["run"] for p in points if p["id_rate"] == 0.0
                         and p["run"] != rate_name(name, 0.0)), None)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, color=color,
                        label=name + (f" (rate 0: {zero})" if zero else ""))
    if res["chance"]:
        c = 100 * res["chance"]["accuracy"]
        ax.axhline(c, ls="--", color="#cc3311", lw=1, label=f"chance {c:.1f}%")
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("ID rate (fraction of training subjects with identity labels)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(res["title"] or "fer-experiment", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(exp: Experiment, out: str, command: str, plots: bool = True) -> dict:
    """Write results.json, results.md and (``plots``) accuracy.png and, with ID rates, id_rate.png under
    ``out``; returns what results.json holds."""
    res = collect(exp, out, command)
    os.makedirs(out, exist_ok=True)
    serial = json.loads(json.dumps(res))  # int fold keys -> strings, as JSON has them
    _atomic_write(os.path.join(out, "results.json"), json.dumps(serial, indent=1) + "\n")
    _atomic_write(os.path.join(out, "results.md"), markdown(res))
    if plots and any(r["mean"] is not None for r in res["runs"]):
        _plot_accuracy(res, os.path.join(out, "accuracy.png"))
        if res["id_rate_curves"]:
            _plot_id_rate(res, os.path.join(out, "id_rate.png"))
    return res


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(
        prog=PROG,
        usage="%(prog)s (--config GRID.toml | --models A,B,...) --out DIR [options] [-- FER_TRAIN_ARGS]",
        description=doc[0] + "\n\n" + doc[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(doc[2:]),
    )
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--config", metavar="GRID.toml", help="the experiment (steps, variants, folds, ...)")
    what.add_argument("--models", metavar="A,B,...", help="one variant per model (--model M), no steps")
    ap.add_argument("--out", required=True, help="experiment folder (runs/, steps/, folds.json, results.*)")
    ap.add_argument("--baseline", help="the variant the others are compared with (default: the config's, "
                    "else the first)")
    ap.add_argument("--folds", type=int, default=None, help="--models: k subject folds (default 10)")
    ap.add_argument("--seed", type=int, default=None, help="--models: seed of every run and of the folds (0)")
    ap.add_argument("--id-rates", metavar="R1,R2,...", help="--models: ID rates of every model but the "
                    "baseline (0: the model fer-train --id-rate 0 trains, taken from --models when there)")
    ap.add_argument("--title", help="report title (default: the config's)")
    ap.add_argument("--jobs", type=int, default=1, help="fer-train processes at a time (default 1)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per job (fer-train --workers-threads, OMP_NUM_THREADS; default 1)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these variants (or steps) and the "
                    "steps they need")
    ap.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from the finished runs")
    ap.add_argument("--trainer", default=TRAINER, help=argparse.SUPPRESS)  # module run as python -m (tests)
    return ap


def _split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


@cli_entry(PROG, extra="train")
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([PROG, *argv])
    own, extra = _split_extra(argv)
    ap = build_parser()
    args = ap.parse_args(own)
    try:
        exp = _experiment(args, extra)
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    out = os.path.normpath(args.out)
    if args.dry_run:
        print_plan(plan(exp, out, args.threads, args.only), args.trainer, args.jobs, exp, out)
        return 0
    require(PROG, "train", "scipy", "matplotlib")
    if args.report_only:
        if not any(r["folds"] for r in collect(exp, out, command)["runs"]):
            print(f"{PROG}: no finished runs of these variants under {os.path.join(out, 'runs')}",
                  file=sys.stderr)
            return 1
        res = write_report(exp, out, command)
        print(_summary_table(res))
        print(f"\nreport: {_report_files(res, out)}", flush=True)
        return 0
    jobs = plan(exp, out, args.threads, args.only)
    os.makedirs(out, exist_ok=True)

    last_plot = [-math.inf]

    def report():
        plots = time.monotonic() - last_plot[0] >= PLOT_EVERY_S
        try:
            write_report(exp, out, command, plots)
            if plots:
                last_plot[0] = time.monotonic()
        except Exception as e:  # a report that cannot be written does not stop the runs
            print(f"{PROG}: warning: report not written: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)

    on_main = _main_thread()  # signal handlers can only be set there
    if on_main:
        previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        rc = run_jobs(jobs, out, args.jobs, args.threads, args.trainer, on_finish=report)
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    if rc == 130:
        return rc
    res = write_report(exp, out, command)
    print("\n" + _summary_table(res))
    print(f"\nreport: {_report_files(res, out)}", flush=True)
    return rc


def _summary_table(res: dict) -> str:
    """The report's title, chance level and main table, for the terminal."""
    main_part = markdown(res).split("\n## ")[0].splitlines()
    keep = [line for line in main_part if line.startswith(("# ", "|", "Chance level"))]
    return "\n".join(keep)


def _report_files(res: dict, out: str) -> str:
    names = ["results.md", "results.json", "accuracy.png"]
    names += ["id_rate.png"] if res["id_rate_curves"] else []
    return ", ".join(os.path.join(out, n) for n in names if os.path.isfile(os.path.join(out, n)))


def _experiment(args, extra: list[str]) -> Experiment:
    if not args.config and not args.models:
        raise ConfigError("give --config GRID.toml or --models A,B,...")
    if args.jobs < 1 or args.threads < 1:
        raise ConfigError("--jobs and --threads must be at least 1")
    if args.dry_run and args.report_only:
        raise ConfigError("--dry-run and --report-only: choose one")
    if args.config:
        for flag, value in (("--folds", args.folds), ("--seed", args.seed), ("--id-rates", args.id_rates)):
            if value is not None:
                raise ConfigError(f"{flag} applies to --models; with --config set it in {args.config}")
        exp = load_config(args.config, extra)
        if args.baseline is not None:
            exp.baseline = args.baseline
            check(exp, "--baseline")
        if args.title is not None:
            exp.title = args.title
    else:
        exp = experiment_from_models(args, extra)
    for name in args.only or []:
        if exp.entry(name) is None:
            raise ConfigError(f"--only {name}: no variant or step of that name "
                              f"(variants: {', '.join(v.name for v in exp.variants)})")
    return exp


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_stop(signum, frame):
    raise _Stop()


if __name__ == "__main__":
    sys.exit(main())
