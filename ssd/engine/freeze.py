"""model.freeze: parts of the detector that fine-tuning leaves as they are.

A prefix names a module by its dotted name in the model (``vgg``, ``base``, ``extras``,
``base.0``); every parameter below it gets ``requires_grad=False``, so `build_optimizer` (which
takes only trainable parameters) leaves it out of the update and of weight decay.

BatchNorm layers below a frozen prefix are kept in eval mode during training too: they
normalise with their stored running statistics and do not update them. Freezing a part means
keeping its whole function fixed; a BatchNorm that went on re-estimating its statistics from
the new data's small batches would change the frozen features under the trained layers above.
`model.train()` is wrapped so that it puts those layers back in eval mode each time.
"""

from __future__ import annotations

import logging
import types
from typing import Sequence

from torch import nn

from ssd.errors import ConfigError

logger = logging.getLogger(__name__)


def matches_prefix(name: str, prefix: str) -> bool:
    """True when the dotted module or parameter `name` lies below `prefix` (or is it)."""
    return name == prefix or name.startswith(prefix + ".")


def freeze_modules(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Freeze the parameters below `prefixes` and keep their BatchNorm layers in eval mode.

    Args:
        model: the detector (in place).
        prefixes: dotted module-name prefixes (model.freeze); empty: nothing is frozen.

    Returns:
        the number of frozen parameter elements (also logged).

    Raises:
        ConfigError: a prefix matches no parameter (the message lists the model's top-level
            modules).
    """
    if not prefixes:
        return 0
    named = dict(model.named_parameters())
    for prefix in prefixes:
        if not any(matches_prefix(name, prefix) for name in named):
            top_level = ", ".join(name for name, module in model.named_children()
                                  if any(True for _ in module.parameters()))
            raise ConfigError(f"model.freeze: '{prefix}' matches no parameter of "
                              f"{type(model).__name__}; its top-level modules: {top_level}")
    frozen = [param for name, param in named.items()
              if any(matches_prefix(name, prefix) for prefix in prefixes)]
    for param in frozen:
        param.requires_grad_(False)
    batch_norms = len(frozen_batchnorm_layers(model, prefixes))
    if batch_norms:
        _keep_frozen_batchnorm_in_eval(model, tuple(prefixes))
    frozen_count = sum(param.numel() for param in frozen)
    total = sum(param.numel() for param in named.values())
    kept = f"; {batch_norms} BatchNorm layers there keep their running statistics" if batch_norms else ""
    logger.info("model.freeze %s: %d of %d parameters frozen (%d tensors)%s", list(prefixes),
                frozen_count, total, len(frozen), kept)
    return frozen_count


def frozen_batchnorm_layers(model: nn.Module, prefixes: Sequence[str]) -> list[nn.Module]:
    """The BatchNorm layers of `model` below one of `prefixes`."""
    return [module for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and any(matches_prefix(name, prefix) for prefix in prefixes)]


def _keep_frozen_batchnorm_in_eval(model: nn.Module, prefixes: tuple[str, ...]) -> None:
    """Wrap `model.train` so that the frozen BatchNorm layers stay in eval mode.

    The wrapper is a method bound to the model, so a deep copy of the model is bound to the copy.
    """
    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        type(self).train(self, mode)
        for layer in frozen_batchnorm_layers(self, prefixes):
            layer.train(False)
        return self

    model.train = types.MethodType(train, model)
    model.train(model.training)
