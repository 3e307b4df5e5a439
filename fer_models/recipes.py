"""Training recipes: each model family's defaults from its paper, which ``fer-train`` applies to every option
the command line does not give.

A :class:`Recipe` holds the optimiser, learning rate and its schedule, batch size, weight decay, loss weights
and input size, with the paper section each value comes from. Families attach theirs with
:func:`register_recipe` next to their ``@register_model`` builders (``fer_models/idennet.py``,
``fer_models/eifn.py``); a user's model module can do the same. :func:`recipe_for` finds a model's recipe.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

__all__ = ["Schedule", "Recipe", "register_recipe", "recipe_for", "list_recipes", "DEFAULT_RECIPE"]


@dataclass(frozen=True)
class Schedule:
    """Learning rate x0.1 at given epochs: ``fractions`` of ``--epochs`` (IDEnNet: 0.5, 0.75), explicit
    ``steps`` (epoch numbers), ``every`` N epochs (EIFN: 20), or ``constant``."""

    kind: str = "constant"
    values: tuple[float, ...] = ()

    def __post_init__(self):
        if self.kind not in ("fractions", "steps", "every", "constant"):
            raise ValueError(f"Schedule.kind: expected fractions, steps, every, constant; got {self.kind!r}")

    def milestones(self, epochs: int) -> list[int]:
        """The epochs (1-based counts of finished epochs) after which the learning rate is divided by 10."""
        if self.kind == "fractions":
            return sorted({max(1, int(round(f * epochs))) for f in self.values if 0 < f < 1})
        if self.kind == "steps":
            return sorted({int(s) for s in self.values if s >= 1})
        if self.kind == "every":
            n = int(self.values[0])
            return list(range(n, epochs, n))
        return []

    def describe(self) -> str:
        if self.kind == "fractions":
            return "x0.1 at " + ", ".join(f"{f:g}" for f in self.values) + " of the epochs"
        if self.kind == "steps":
            return "x0.1 after epochs " + ",".join(str(int(s)) for s in self.values)
        if self.kind == "every":
            return f"x0.1 every {int(self.values[0])} epochs"
        return "constant"


@dataclass(frozen=True)
class Recipe:
    """A model family's training defaults, from its paper.

    Attributes:
        family (str): e.g. ``IDEnNet``. paper (str): where the values come from.
        optimizer (str), momentum (float): SGD with momentum (both papers).
        lr (float), pretrain_lr (float | None): initial learning rate of ``--stage train|finetune`` and of
            ``--stage pretrain`` (None: ``lr``).
        schedule (Schedule), pretrain_schedule (Schedule | None): the same for the schedule.
        batch_size (int), weight_decay (float).
        loss_weight_names (tuple[str, ...]): the model keyword arguments ``--lambdas`` sets, in order.
        loss_weights (tuple[float, ...]): their values for any dataset not in ``loss_weights_by_dataset``.
        loss_weights_by_dataset (Mapping[str, tuple]): values for a given ``--dataset`` (EIFN: by database).
        input_size (int): the model's input side. resize (int): stored face side (crops of ``input_size``).
        id_rate_zero (Callable[[str], str] | None): model name -> the model trained at ``--id-rate 0``, the
            family's baseline without identity information (IDEnNet Fig. 3: the Original Network); None:
            the model itself.
        sources (Mapping[str, str]): paper section of each value (printed by ``fer-train``).
    """

    family: str
    paper: str
    lr: float
    batch_size: int
    weight_decay: float
    schedule: Schedule
    input_size: int
    resize: int
    optimizer: str = "SGD"
    momentum: float = 0.9
    pretrain_lr: float | None = None
    pretrain_schedule: Schedule | None = None
    loss_weight_names: tuple[str, ...] = ()
    loss_weights: tuple[float, ...] = ()
    loss_weights_by_dataset: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    id_rate_zero: Callable[[str], str] | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def stage_lr(self, stage: str) -> float:
        return self.pretrain_lr if stage == "pretrain" and self.pretrain_lr is not None else self.lr

    def stage_schedule(self, stage: str) -> Schedule:
        return self.pretrain_schedule if stage == "pretrain" and self.pretrain_schedule else self.schedule

    def weights_for(self, dataset: str) -> tuple[float, ...]:
        return tuple(self.loss_weights_by_dataset.get(dataset, self.loss_weights))

    def summary(self) -> str:
        """One line: the recipe's values (``fer-train --help``)."""
        lr = f"lr {self.lr:g}" + (f" (pretrain {self.pretrain_lr:g})" if self.pretrain_lr is not None else "")
        sched = self.schedule.describe() + (
            f" (pretrain: {self.pretrain_schedule.describe()})" if self.pretrain_schedule else ""
        )
        parts = [
            f"{self.optimizer} momentum {self.momentum:g}",
            lr,
            sched,
            f"batch {self.batch_size}",
            f"weight decay {self.weight_decay:g}",
            f"input {self.resize}" + (f"->{self.input_size} crop" if self.resize != self.input_size else ""),
        ]
        if self.loss_weight_names:
            w = ",".join(f"{v:g}" for v in self.loss_weights)
            by = "; ".join(
                f"{d}: {','.join(f'{v:g}' for v in vs)}" for d, vs in self.loss_weights_by_dataset.items()
            )
            parts.append(f"--lambdas ({','.join(self.loss_weight_names)}) {w}" + (f" ({by})" if by else ""))
        return ", ".join(parts)


# Used for a model without a registered recipe: fer-train's defaults before recipes existed (IDEnNet's).
DEFAULT_RECIPE = Recipe(
    family="default",
    paper="fer-train's defaults (no recipe registered for the model)",
    lr=0.01,
    pretrain_lr=0.1,
    batch_size=128,
    weight_decay=1e-4,
    schedule=Schedule("fractions", (0.5, 0.75)),
    input_size=0,
    resize=0,
)

_RECIPES: list[tuple[str, Recipe]] = []


def register_recipe(models: str | Iterable[str], recipe: Recipe) -> Recipe:
    """Attach ``recipe`` to the registered model names (or glob patterns) ``models``; the latest
    registration matching a name wins."""
    for pattern in [models] if isinstance(models, str) else list(models):
        _RECIPES.append((pattern, recipe))
    return recipe


def recipe_for(model: str) -> Recipe | None:
    """The recipe registered for ``model``, or None."""
    for pattern, recipe in reversed(_RECIPES):
        if fnmatch.fnmatchcase(model, pattern):
            return recipe
    return None


def list_recipes() -> list[tuple[list[str], Recipe]]:
    """``[(patterns, recipe)]``: every registered recipe with the names it was attached to, in registration
    order."""
    out: dict[int, tuple[list[str], Recipe]] = {}
    for pattern, recipe in _RECIPES:
        out.setdefault(id(recipe), ([], recipe))[0].append(pattern)
    return list(out.values())


def with_values(recipe: Recipe, **changes) -> Recipe:
    """``recipe`` with some fields changed (a variant of a family recipe)."""
    return replace(recipe, **changes)
