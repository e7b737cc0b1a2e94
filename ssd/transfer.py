"""Fine-tuning a trained detector to another class list.

Everything whose shape fits is loaded (backbone, extras, L2Norm, localisation heads). The
confidence heads are rebuilt for the new classes; for background and every class found in both
lists (by name, or through an explicit ``{new: old}`` map) the head's weights for that class are
copied from the source, so such classes score from the first iteration. The rest keeps the new
model's initialisation.

A confidence head is a convolution with ``anchors * num_classes`` output channels, ordered
anchor-major: output channel ``a * C + c`` is class ``c`` of anchor ``a`` (see `SSD.forward`,
which reshapes (B, A*C, H, W) to (B, H*W*A, C)).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

BACKGROUND = "__background__"


class ClassMapError(ValueError):
    """A class map names a class that is not in the new or the source class list."""


@dataclass
class TransferReport:
    """What `transfer_weights` did, for the log."""

    loaded: list[str] = field(default_factory=list)  # tensors copied whole
    copied_classes: dict[str, str] = field(default_factory=dict)  # new class -> source class
    new_classes: list[str] = field(default_factory=list)  # classes left at initialisation
    reinitialised: list[str] = field(default_factory=list)  # tensors not taken from the source
    rebuilt_heads: list[str] = field(default_factory=list)  # conf tensors built class by class

    def summary(self) -> str:
        """A few lines naming what was loaded, copied and re-initialised."""
        copied = ", ".join(f"{new}<-{old}" if new != old else new
                           for new, old in self.copied_classes.items()) or "none"
        lines = [
            f"Transfer: loaded {len(self.loaded)} tensors unchanged; confidence heads rebuilt "
            f"({len(self.rebuilt_heads)} tensors) with the rows of background + "
            f"{len(self.copied_classes)} classes copied from the source",
            f"  copied classes: {copied}",
            f"  new classes (initialised): {', '.join(self.new_classes) or 'none'}",
        ]
        if self.reinitialised:
            lines.append(f"  re-initialised tensors (shape differs or absent in the source): "
                         f"{', '.join(self.reinitialised)}")
        return "\n".join(lines)


def class_correspondence(
    new_classes: Sequence[str], source_classes: Sequence[str],
    class_map: Mapping[str, str] | None = None,
) -> dict[int, int]:
    """Column correspondence of the confidence heads, background included.

    Args:
        new_classes: foreground class names of the model being trained (label order).
        source_classes: foreground class names the source weights were trained on.
        class_map: optional {new name: source name} for renamed classes; other new classes are
            matched by equal name.

    Returns:
        {new column: source column}, columns counting background as 0 (so class label l is
        column l + 1); always contains 0 -> 0.

    Raises:
        ClassMapError: a map entry names an unknown new or source class.
    """
    class_map = dict(class_map or {})
    source_column = {name: column for column, name in enumerate(source_classes, start=1)}
    for new, old in class_map.items():
        if new not in new_classes:
            raise ClassMapError(f"model.class_map: '{new}' is not one of the new classes "
                                f"{list(new_classes)}")
        if old not in source_column:
            raise ClassMapError(f"model.class_map: '{old}' (for '{new}') is not one of the source "
                                f"classes {list(source_classes)}")
    correspondence = {0: 0}
    for column, name in enumerate(new_classes, start=1):
        source_name = class_map.get(name, name)
        if source_name in source_column:
            correspondence[column] = source_column[source_name]
    return correspondence


def _copy_class_rows(target: torch.Tensor, source: torch.Tensor, anchors: int,
                     correspondence: Mapping[int, int]) -> torch.Tensor:
    """A copy of `target` (conf weight [A*C_new, ...] or bias [A*C_new]) with the rows of the
    corresponding classes taken from `source` ([A*C_old, ...])."""
    new_classes = target.shape[0] // anchors
    old_classes = source.shape[0] // anchors
    result = target.detach().clone()
    # (A*C, ...) -> (A, C, ...): anchor-major rows, class within anchor
    result_view = result.view(anchors, new_classes, *target.shape[1:])
    source_view = source.view(anchors, old_classes, *source.shape[1:])
    for new_column, old_column in correspondence.items():
        result_view[:, new_column] = source_view[:, old_column]
    return result


def transfer_weights(
    model: nn.Module, source_state: Mapping[str, torch.Tensor], source_classes: Sequence[str],
    new_classes: Sequence[str], class_map: Mapping[str, str] | None = None,
) -> TransferReport:
    """Load `source_state` into `model` for a new class list (in place).

    Args:
        model: an SSD built for `new_classes` (its conf heads: `conf.<k>.weight/bias`).
        source_state: the trained detector's state_dict.
        source_classes, new_classes: foreground class names (label order) of each.
        class_map: optional {new name: source name} for renamed classes.

    Returns:
        a `TransferReport` (also logged).
    """
    correspondence = class_correspondence(new_classes, source_classes, class_map)
    column_names = [BACKGROUND, *new_classes]
    source_names = [BACKGROUND, *source_classes]
    report = TransferReport(
        copied_classes={column_names[new]: source_names[old]
                        for new, old in correspondence.items() if new},
        new_classes=[name for column, name in enumerate(column_names) if column
                     and column not in correspondence],
    )
    anchors = model.num_anchors_per_location()
    state = model.state_dict()
    for key, value in state.items():
        given = source_state.get(key)
        head = _conf_head_index(key)
        if given is not None and head is not None and _holds_class_rows(
                value, given, anchors[head], len(column_names), len(source_names)):
            state[key] = _copy_class_rows(value, given.to(value.dtype), anchors[head], correspondence)
            report.rebuilt_heads.append(key)
        elif given is not None and given.shape == value.shape:
            state[key] = given.to(value.dtype)
            report.loaded.append(key)
        else:
            report.reinitialised.append(key)
    model.load_state_dict(state)
    logger.info(report.summary())
    return report


def _conf_head_index(key: str) -> int | None:
    """k for the tensors of confidence head k ('conf.<k>.weight', 'conf.<k>.1.bias', ...)."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[0] == "conf" and parts[1].isdigit():
        return int(parts[1])
    return None


def _holds_class_rows(value: torch.Tensor, given: torch.Tensor, anchors: int, new_columns: int,
                      source_columns: int) -> bool:
    """True for a head tensor with one row per (anchor, class) in both models (the class
    prediction itself, not e.g. the class-independent depthwise part of a separable head)."""
    return (value.dim() >= 1 and value.shape[0] == anchors * new_columns
            and given.shape[0] == anchors * source_columns and value.shape[1:] == given.shape[1:])
