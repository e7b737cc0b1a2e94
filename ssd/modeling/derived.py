"""The config a model's derived settings fill in: `resolve_priors(cfg)` sets every null
model.priors key to the value the backbone derives (ssd.priors.derive_prior_settings).

Apart from ssd.modeling.registry, which config validation imports for the backbone names: that
module never imports ssd.config, so the package keeps no import cycle.
"""

from __future__ import annotations

import torch

from ssd.config import Config, load_config_from_dict
from ssd.modeling.registry import build_model
from ssd.modeling.ssd import SSD


def resolve_priors(cfg: Config, model: SSD | None = None) -> Config:
    """`cfg` with every model.priors key set to the value the model uses, so that it builds the
    same priors on its own (a checkpoint's config, a script that reads the settings).

    Args:
        cfg: a config whose model.priors keys may be null (derived from the backbone).
        model: the model built from `cfg`; None builds it on the meta device (no weights and
            no arithmetic: only the feature map sizes are worked out).

    Returns `cfg` itself when no key is null.
    """
    if all(value is not None for value in cfg.model.priors.to_dict().values()):
        return cfg
    if model is None:
        with torch.device("meta"):
            model = build_model(cfg)
    data = cfg.to_dict()
    data["model"]["priors"] = dict(model.prior_settings)
    return load_config_from_dict(data, source="the config with its derived model.priors")
