"""Weight files: the one place that reads them.

Supported files (all read with ``torch.load(weights_only=True)``; numpy arrays are allowed
because training checkpoints store the numpy RNG state):

- this project's checkpoints: a dict with ``model`` (state_dict) and ``config`` (plain nested
  dict) plus optional training state (optimizer, scheduler, rng, ...);
- bare state_dicts in the classic layout (``vgg.0.weight`` ... ``conf.5.bias``, as in
  ``ssd300_mAP_77.43_v2.pth``), with or without the ``module.`` prefix of DataParallel;
- reduced-fc VGG16 backbones (``0.weight`` ... ``33.bias``, as ``vgg16_reducedfc.pth``) for
  ``model.pretrained``, made from torchvision's ImageNet VGG16 by `convert_torchvision_vgg16`;
- torchvision's ImageNet classifiers (``mobilenet_v3_large-8738ca79.pth``,
  ``resnet50-0676ba61.pth``) for ``model.pretrained`` of the mobilenet_v3_large and resnet50
  backbones, or ``model.pretrained: torchvision`` for the same files from the torch hub folder.

Anything else is an error that says what the file holds and what was expected.

`load_training_weights` starts training from a detector trained on other classes (fine-tuning):
see `ssd.transfer` for what is loaded and copied.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from torch import nn

from ssd.commands import clone_script, command
from ssd.config import Config, load_checkpoint_config, load_config
from ssd.data.build import class_names_for
from ssd.data.voc import VOC_CLASSES
from ssd.fileio import UnsafeFileError, safe_torch_load
from ssd.modeling import build_model
from ssd.modeling.imagenet import TorchvisionWeights
from ssd.modeling.vgg import vgg16_reducedfc_layers
from ssd.transfer import TransferReport, transfer_weights

logger = logging.getLogger(__name__)

TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
REDUCED_FC_FILE = "weights/vgg16_reducedfc.pth"

# fc6 -> conv6 / fc7 -> conv7 ("a trous" reduction of the SSD paper). torchvision pools
# conv5_3 to a 7x7 grid and fc6 reads it flattened as (C, H, W). SSD keeps every 4th unit
# (4096 -> 1024) and the taps 0, 3, 6 of the 7x7 grid; pool5 becomes stride 1, so taps that
# were 2 * 3 = 6 pixels apart on the stride-1 map give conv6 its dilation of 6.
FC_GRID = 7
UNIT_STEP = 4
TAP_STEP = 3

_MAX_LISTED = 8  # keys listed per category in a mismatch message
# state_dict prefix -> backbone name
_BACKBONE_PREFIXES = {"vgg.": "vgg16", "base.": "ssd7", "mobilenet.": "mobilenet_v3_large",
                      "resnet.": "resnet50"}
# model.pretrained value that asks torchvision's weights API for a backbone's ImageNet weights
TORCHVISION_PRETRAINED = "torchvision"


class WeightsError(ValueError):
    """A weights file cannot be used; the message says what it holds and what was expected."""


# ------------------------------------------------------------------------------ conversion
def fc6_to_conv6(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subsample a fully connected fc6 into the dilated 3x3 conv6.

    Args:
        weight: [O, C * 7 * 7] fc6 weight (torchvision: [4096, 25088]).
        bias: [O] fc6 bias.

    Returns:
        conv6 weight [O / 4, C, 3, 3] (every 4th unit; taps 0, 3, 6 in both directions) and
        bias [O / 4]; for VGG16 [1024, 512, 3, 3] and [1024]. Use with dilation 6.
    """
    out_units, in_features = weight.shape
    channels = in_features // FC_GRID**2
    if channels * FC_GRID**2 != in_features or out_units % UNIT_STEP:
        raise WeightsError(
            f"fc6 weight {_shape(weight)} does not read a {FC_GRID}x{FC_GRID} grid "
            f"(in features = C * {FC_GRID * FC_GRID}) or its units are not a multiple of {UNIT_STEP}"
        )
    # (O, C*7*7) -> (O, C, 7, 7): undo torchvision's flatten of the pooled (C, H, W) map
    kernel = weight.reshape(out_units, channels, FC_GRID, FC_GRID)
    kernel = kernel[::UNIT_STEP, :, ::TAP_STEP, ::TAP_STEP]  # (O/4, C, 3, 3): taps 0, 3, 6
    return _copy(kernel), _copy(bias[::UNIT_STEP])


def fc7_to_conv7(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subsample fc7 [O, I] (and bias [O]) by 4 in both dimensions into a 1x1 conv7.

    Returns weight [O / 4, I / 4, 1, 1] and bias [O / 4]; for VGG16 [1024, 1024, 1, 1].
    """
    out_units, in_units = weight.shape
    if out_units % UNIT_STEP or in_units % UNIT_STEP:
        raise WeightsError(f"fc7 weight {_shape(weight)}: both sizes must be multiples of "
                           f"{UNIT_STEP}")
    kernel = weight[::UNIT_STEP, ::UNIT_STEP]  # (O/4, I/4)
    return _copy(kernel[:, :, None, None]), _copy(bias[::UNIT_STEP])  # (O/4, I/4, 1, 1)


def convert_torchvision_vgg16(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's VGG16 state_dict -> the reduced-fc layer list of the SSD backbone.

    Args:
        state_dict: ``features.N.weight/bias`` for the 13 convolutions (conv1_1 ... conv5_3)
            and ``classifier.0`` (fc6), ``classifier.3`` (fc7); ``classifier.6`` is dropped.

    Returns:
        A state_dict for `model.vgg` (keys ``0.weight`` ... ``33.bias`` for VGG16, the layout
        of the classic vgg16_reducedfc.pth): the convolutions copied, conv6 and conv7 from
        `fc6_to_conv6` and `fc7_to_conv7`. Tensors are fresh copies (no shared storage).
    """
    source = _strip_prefix(dict(state_dict), "module.")
    feature_convs = _torchvision_feature_convs(source)
    targets = _reduced_fc_conv_indices()  # the 13 VGG convs, then conv6 and conv7
    if len(feature_convs) != len(targets) - 2:
        raise WeightsError(
            f"expected the {len(targets) - 2} convolutions of VGG16 (features.N.weight), found "
            f"{len(feature_convs)} at features.{feature_convs}; VGG11/13/19 are not supported"
        )
    converted: dict[str, torch.Tensor] = {}
    for src, dst in zip(feature_convs, targets[:-2]):
        converted[f"{dst}.weight"] = _copy(source[f"features.{src}.weight"])
        converted[f"{dst}.bias"] = _copy(source[f"features.{src}.bias"])
    last_channels = source[f"features.{feature_convs[-1]}.weight"].shape[0]
    fc6_weight = source["classifier.0.weight"]
    if fc6_weight.shape[1] != last_channels * FC_GRID**2:
        raise WeightsError(
            f"classifier.0.weight (fc6) {_shape(fc6_weight)} expects "
            f"{fc6_weight.shape[1]} inputs, but conv5_3 gives {last_channels} x {FC_GRID} x "
            f"{FC_GRID} = {last_channels * FC_GRID**2}"
        )
    conv6, conv7 = targets[-2:]
    converted[f"{conv6}.weight"], converted[f"{conv6}.bias"] = fc6_to_conv6(
        fc6_weight, source["classifier.0.bias"]
    )
    converted[f"{conv7}.weight"], converted[f"{conv7}.bias"] = fc7_to_conv7(
        source["classifier.3.weight"], source["classifier.3.bias"]
    )
    return converted


def read_torchvision_vgg16(path: str | Path) -> dict[str, torch.Tensor]:
    """Read torchvision's ImageNet VGG16 file and return it converted (see above)."""
    missing = (
        f"VGG16 file not found: {path}. This is torchvision's ImageNet VGG16 "
        f"({TORCHVISION_VGG16_FILE}, found in ~/.cache/torch/hub/checkpoints/ after "
        f"torchvision.models.vgg16(weights='IMAGENET1K_V1') on a machine with internet access)."
    )
    state_dict, _ = _read_weights_file(path, missing)
    return convert_torchvision_vgg16(state_dict)


def _torchvision_feature_convs(state_dict: Mapping[str, torch.Tensor]) -> list[int]:
    """Indices N of the ``features.N`` convolutions, checking the torchvision layout."""
    keys = list(state_dict)
    if any(key.startswith("features.") and key.endswith("running_mean") for key in keys):
        raise WeightsError(
            "this is a batch-norm VGG16 (torchvision vgg16_bn); the SSD backbone has no batch "
            f"norm: use torchvision's plain vgg16 ({TORCHVISION_VGG16_FILE})"
        )
    required = [f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
    missing = [key for key in required if key not in state_dict]
    if keys and all(re.match(r"\d+\.", key) for key in keys):
        raise WeightsError("this file is already a reduced-fc VGG16 (keys 0.weight ... "
                           "33.bias): use it as model.pretrained as it is")
    if missing or not any(key.startswith("features.") for key in keys):
        hint = _layout_hint(keys)
        raise WeightsError(
            "expected torchvision's VGG16 layout (features.N.weight/bias, classifier.0 and "
            f"classifier.3); the file has {_preview(keys)}{' — ' + hint if hint else ''}"
        )
    indices = []
    for key, value in state_dict.items():
        matched = re.fullmatch(r"features\.(\d+)\.weight", key)
        if matched and value.dim() == 4:
            indices.append(int(matched.group(1)))
    return sorted(indices)


def _reduced_fc_conv_indices() -> list[int]:
    """Positions of the 15 convolutions in the SSD backbone's layer list, from its structure."""
    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        layers, _ = vgg16_reducedfc_layers()
    return [index for index, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]


# --------------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a detector weights file.

    Accepts this project's checkpoints (``{"model": state_dict, "config": dict, ...}``; the
    moving average ``ema`` when it has one, see ssd.engine.ema) and bare state_dicts
    (``module.`` prefixes are stripped).

    Returns:
        (state_dict, config dict or None when the file carries no config).

    Raises:
        FileNotFoundError: the file does not exist (the message says how to get one).
        WeightsError: the file is not a state_dict or checkpoint (says what it holds).
    """
    missing = (
        f"Weights file not found: {path}. Train a model with "
        f"`{command('ssd-train')} --config configs/shapes.yaml` (checkpoints are written to "
        f"train.output_dir, e.g. runs/shapes/best.pth), or put published weights such as "
        f"ssd300_mAP_77.43_v2.pth in weights/."
    )
    return _read_weights_file(path, missing)


def _read_weights_file(
    path: str | Path, missing_message: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path} is a folder; expected a .pth weights file")
    if not path.is_file():
        raise FileNotFoundError(missing_message)
    return _split_checkpoint(_torch_load(path), path)


def _torch_load(path: Path) -> Any:
    """torch.load restricted to plain data (see `ssd.fileio.safe_torch_load`)."""
    try:
        return safe_torch_load(path)
    except UnsafeFileError as err:
        raise WeightsError(str(err)) from err


def _split_checkpoint(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state_dict without `module.`, config dict or None) of a loaded file."""
    expected = ("expected a state_dict (a dict of tensors) or a checkpoint of this project "
                "(a dict with 'model' and 'config')")
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}; {expected}")
    if isinstance(obj.get("model"), Mapping):
        state_dict, config = _inference_weights(obj), _config_of(obj.get("config"), path)
    else:
        state_dict, config = obj, None
    not_tensors = [key for key, value in state_dict.items() if not torch.is_tensor(value)]
    if not state_dict or not_tensors:
        raise WeightsError(
            f"{path} is not a state_dict: {expected}. Its top-level keys: {_preview(list(obj))}"
            + (f"; not tensors: {_preview(not_tensors)}" if not_tensors else "")
        )
    return _strip_prefix(dict(state_dict), "module."), config


def _inference_weights(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """A checkpoint's weights to predict with: its moving average (`ema`, trained with
    train.ema_decay) when it has one, else the trained weights (`model`)."""
    ema = checkpoint.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("model"), Mapping):
        return ema["model"]
    return checkpoint["model"]


def _config_of(value: Any, path: Path) -> dict[str, Any] | None:
    """A checkpoint's 'config' entry as a plain dict (YAML text is accepted too)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if not isinstance(value, Mapping):
        raise WeightsError(f"{path}: 'config' must be a nested dict of the config, got "
                           f"{type(value).__name__}")
    return dict(value)


# --------------------------------------------------------------------------------- loading
def check_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    hint: str = "",
    target: str | None = None,
    class_rows_may_differ: bool = False,
) -> None:
    """Raise WeightsError listing missing keys, unexpected keys and shape mismatches.

    Args:
        module: the module the state_dict should load into (strictly).
        state_dict: the weights to check.
        source: where they come from (a path), for the message.
        hint: a closing sentence for the message (what to do).
        target: what `module` is, for the message (default: the model and its class).
        class_rows_may_differ: accept confidence head tensors (``conf.*``) whose first
            dimension (anchors x classes) differs, as a transfer to other classes rebuilds them.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [key for key in expected if key in state_dict
                  and not _shapes_fit(key, state_dict[key], expected[key], class_rows_may_differ)]
    if not (missing or unexpected or mismatched):
        return
    target = target or f"the model ({type(module).__name__})"
    lines = [f"Weights from {source} do not fit {target}:"]
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}):")
        lines += [
            f"    {key}: checkpoint {_shape(state_dict[key])} vs model {_shape(expected[key])}"
            + _class_count_note(key, state_dict, expected)
            for key in mismatched[:_MAX_LISTED]
        ]
        lines += _more(mismatched)
    for title, keys in (("missing keys (in the model, not in the file)", missing),
                        ("unexpected keys (in the file, not in the model)", unexpected)):
        if keys:
            lines.append(f"  {title} ({len(keys)}): {', '.join(keys[:_MAX_LISTED])}")
            lines += _more(keys)
    notes = [_layout_hint(list(state_dict)), _backbone_note(list(state_dict), list(expected)), hint]
    lines += [note for note in notes if note]
    raise WeightsError("\n".join(lines))


def load_model_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state_dict` into `model` strictly; on any difference raise WeightsError (listing
    missing keys, unexpected keys and shape mismatches, with the class counts when inferable).
    """
    hint = ("Use the config the weights were trained with (--config), or a checkpoint of "
            "this project, which stores its config.")
    check_state_dict(model, state_dict, source, hint=hint)
    model.load_state_dict(state_dict, strict=True)


def _shapes_fit(key: str, given: torch.Tensor, expected: torch.Tensor, class_rows_may_differ: bool) -> bool:
    if given.shape == expected.shape:
        return True
    return (class_rows_may_differ and key.startswith("conf.") and given.dim() == expected.dim() >= 1
            and given.shape[1:] == expected.shape[1:])


def trained_class_names(
    state_dict: Mapping[str, torch.Tensor], stored_config: Mapping[str, Any] | None, source: str
) -> list[str] | None:
    """Foreground class names (label order) a detector's weights were trained on.

    Args:
        state_dict: the detector's weights (conf.0.weight and loc.0.weight give its class count
            when the file has no config).
        stored_config: the config stored in the checkpoint, or None (a classic state_dict).
        source: the file, for messages.

    Returns:
        the stored config's data.class_names, or the built-in names of its data.format (VOC's
        20, the shapes' 6); for a classic state_dict of 21 classes VOC's 20; otherwise generic
        names ``class_0``, ``class_1``, ... (for `model.class_map`). None when the weights hold
        no confidence head (not a detector).
    """
    if stored_config is not None:
        return class_names_for(load_checkpoint_config(stored_config, source=f"the config stored in {source}"))
    if "conf.0.weight" not in state_dict or "loc.0.weight" not in state_dict:
        return None
    columns = _classes_of(state_dict["conf.0.weight"], state_dict["loc.0.weight"])
    if columns is None:
        return None
    if columns == len(VOC_CLASSES) + 1:
        return list(VOC_CLASSES)
    return [f"class_{label}" for label in range(columns - 1)]


def load_training_weights(
    model: nn.Module, path: str | Path, class_names: Sequence[str],
    class_map: Mapping[str, str] | None = None,
) -> TransferReport | None:
    """Initialise `model` (built for `class_names`) from a detector weights file (--weights).

    Weights trained on the same classes load strictly (`load_model_weights`). Weights trained
    on other classes (another count, other names or order, or a `class_map` given) are
    transferred (`ssd.transfer.transfer_weights`): every tensor that fits loads, the confidence
    heads are rebuilt with the rows of background and of the classes found in both lists.

    Args:
        model: the detector to train (in place).
        path: a checkpoint of this project or a classic state_dict.
        class_names: the foreground classes of `model` in label order.
        class_map: model.class_map, {new class: source class} for renamed classes.

    Returns:
        the transfer's report (also logged), or None when the weights loaded strictly.

    Raises:
        WeightsError: the file does not fit the model apart from the classes (another backbone,
            other priors: the message lists the keys).
        ClassMapError: `class_map` names a class in neither list.
    """
    state_dict, stored = read_checkpoint(path)
    return transfer_checkpoint(model, state_dict, stored, str(path), class_names, class_map)


def transfer_checkpoint(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], stored_config: Mapping[str, Any] | None,
    source: str, class_names: Sequence[str], class_map: Mapping[str, str] | None = None,
) -> TransferReport | None:
    """`load_training_weights` for weights already read (`read_checkpoint`): load strictly when
    they were trained on `class_names`, else transfer them by class name (`transfer_weights`).

    Args:
        model: the detector built for `class_names` (in place).
        state_dict, stored_config: what `read_checkpoint` returned for `source`.
        source: the weights file, for messages.
        class_names: the foreground classes of `model` in label order.
        class_map: model.class_map, {new class: source class} for renamed classes.

    Returns:
        the transfer's report (also logged), or None when the weights loaded strictly.
    """
    source_names = trained_class_names(state_dict, stored_config, source)
    if source_names is None or (list(source_names) == list(class_names) and not class_map):
        load_model_weights(model, state_dict, source=source)
        return None
    logger.info("%s was trained for %d classes (%s); this config has %d (%s): transferring the "
                "weights by class name", source, len(source_names), _preview(list(source_names)),
                len(class_names), _preview(list(class_names)))
    hint = ("Apart from the classes, fine-tuning needs the weights of the same architecture: use "
            "the model.backbone, model.image_size and model.priors the weights were trained with.")
    check_state_dict(model, state_dict, source, hint=hint, class_rows_may_differ=True)
    return transfer_weights(model, state_dict, source_names, class_names, class_map)


def load_vgg_backbone(model: nn.Module, path: str | Path) -> None:
    """Load a reduced-fc VGG16 file (e.g. weights/vgg16_reducedfc.pth) into `model.vgg`.

    Keys may be bare (``0.weight`` ... ``33.bias``) or prefixed ``vgg.``; from a full SSD
    state_dict only the ``vgg.`` entries are used. Loading is strict.

    Raises:
        FileNotFoundError: the file is missing (the message says where to put it and how to
            make it with scripts/convert_vgg.py).
        WeightsError: the model has no VGG layers, or keys/shapes differ.
    """
    vgg = getattr(model, "vgg", None)
    if not isinstance(vgg, nn.Module):
        raise WeightsError(
            f"model.pretrained loads VGG16 backbone weights, but {type(model).__name__} has no "
            f"VGG layers (model.vgg); use backbone vgg16 or set model.pretrained=null"
        )
    missing = (
        f"VGG16 backbone weights not found: {path} (model.pretrained). Put the reduced-fc "
        f"VGG16 at {REDUCED_FC_FILE}, or make it from torchvision's ImageNet VGG16 "
        f"({TORCHVISION_VGG16_FILE}): "
        f"{clone_script('convert_vgg.py', f'{TORCHVISION_VGG16_FILE} {REDUCED_FC_FILE}')}. "
        "To train from scratch instead, set model.pretrained=null."
    )
    state_dict, _ = _read_weights_file(path, missing)
    if any(key.startswith("vgg.") for key in state_dict):
        state_dict = {key[4:]: value for key, value in state_dict.items() if key.startswith("vgg.")}
    hint = "Expected a reduced-fc VGG16 (keys 0.weight ... 33.bias, as vgg16_reducedfc.pth)."
    check_state_dict(vgg, state_dict, f"{path} (model.pretrained)", hint=hint,
                     target="the VGG16 backbone (model.vgg)")
    vgg.load_state_dict(state_dict, strict=True)


def load_pretrained_backbone(model: nn.Module, pretrained: str) -> None:
    """Initialise the backbone of `model` as `model.pretrained` asks.

    Backbones that declare `TORCHVISION_WEIGHTS` (ssd.modeling.imagenet.TorchvisionWeights)
    take torchvision's ImageNet weights: `pretrained` is a file in torchvision's layout or
    "torchvision" (`load_torchvision_backbone`); the VGG16 backbone takes a reduced-fc file
    (`load_vgg_backbone`).

    Raises:
        FileNotFoundError: the weights are not there (the message says where to put them).
        WeightsError: the backbone takes no pretrained weights, or the file does not fit.
    """
    spec = getattr(model, "TORCHVISION_WEIGHTS", None)
    if spec is not None:
        load_torchvision_backbone(model, spec, pretrained)
    elif isinstance(getattr(model, "vgg", None), nn.Module):
        if pretrained == TORCHVISION_PRETRAINED:
            raise WeightsError(
                f"model.pretrained={TORCHVISION_PRETRAINED} is for the backbones with torchvision "
                f"ImageNet weights (mobilenet_v3_large, resnet50); vgg16 takes a reduced-fc VGG16 "
                f"file such as {REDUCED_FC_FILE} (made by {clone_script('convert_vgg.py')})"
            )
        load_vgg_backbone(model, pretrained)
    else:
        raise WeightsError(
            f"model.pretrained={pretrained!r}: {type(model).__name__} has no pretrained backbone "
            f"weights to load; set model.pretrained=null"
        )


def load_torchvision_backbone(model: nn.Module, spec: TorchvisionWeights, pretrained: str | Path) -> None:
    """Load torchvision's ImageNet weights into `model.<spec.target>` strictly.

    Args:
        model: the detector.
        spec: its `TorchvisionWeights` (which weights, which file, which attribute, which keys).
        pretrained: a state_dict file in torchvision's layout (e.g. resnet50-0676ba61.pth), or
            "torchvision": the file in the torch hub checkpoints folder, downloaded there by
            torchvision's weights API when missing.

    Raises:
        FileNotFoundError: the file is missing, or "torchvision" could not download it (the
            message names the file, its URL and where to put it).
        WeightsError: keys or shapes differ from the backbone's.
    """
    path = _torchvision_weights_file(spec) if pretrained == TORCHVISION_PRETRAINED else Path(pretrained)
    missing = (
        f"{spec.backbone} ImageNet weights not found: {path} (model.pretrained). Use torchvision's "
        f"{spec.file_name} ({spec.weights}): put it in {_hub_checkpoints()} and set "
        f"model.pretrained={TORCHVISION_PRETRAINED}, or set model.pretrained to its path. To "
        f"train from scratch instead, set model.pretrained=null."
    )
    state_dict, _ = _read_weights_file(path, missing)
    state_dict = {
        key[len(spec.source_prefix):]: value
        for key, value in state_dict.items()
        if key.startswith(spec.source_prefix) and not key.startswith(spec.unused_prefixes)
    }
    target = getattr(model, spec.target)
    check_state_dict(target, state_dict, f"{path} (model.pretrained)",
                     hint=f"Expected torchvision's {spec.backbone} state_dict ({spec.file_name}).",
                     target=f"the {spec.backbone} backbone (model.{spec.target})")
    target.load_state_dict(state_dict, strict=True)


def _hub_checkpoints() -> Path:
    """The folder where torchvision's weights API keeps downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_weights_file(spec: TorchvisionWeights) -> Path:
    """The hub checkpoints file of `spec`, downloaded by torchvision's weights API if missing.

    Raises:
        FileNotFoundError: not there and the download failed (offline); says where to put it.
    """
    import torchvision

    weights = torchvision.models.get_weight(spec.weights)
    path = _hub_checkpoints() / spec.file_name
    if path.is_file():
        return path
    try:
        # Downloads to the hub checkpoints folder (hash-checked); read below with safe_torch_load.
        weights.get_state_dict(progress=False, check_hash=True)
    except OSError as err:  # URLError, socket and HTTP errors are OSErrors
        raise FileNotFoundError(
            f"model.pretrained={TORCHVISION_PRETRAINED}: {spec.backbone} ImageNet weights "
            f"{spec.file_name} are not in {path.parent} and could not be downloaded from "
            f"{weights.url} ({err}). Download that file where there is internet and put it at "
            f"{path}, or set model.pretrained to its path (or null to train from scratch)."
        ) from err
    return path


def build_model_from_weights(
    path: str | Path, cfg: Config | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config]:
    """Build the model a weights file was trained as, load the weights, return (model, cfg).

    The config is the one stored in the checkpoint when it carries one (it wins over `cfg`;
    older configs are migrated, see `ssd.config.load_checkpoint_config`), else `cfg`, else the
    built-in defaults: SSD300 on VOC, the model of the classic checkpoints (the same model as
    configs/voc300.yaml, without reading any file). The model is on `device` in eval mode.
    """
    state_dict, stored = read_checkpoint(path)
    if stored is not None:
        cfg = load_checkpoint_config(stored, source=f"the config stored in {path}")
    elif cfg is None:
        cfg = load_config()
    model = build_model(cfg)
    load_model_weights(model, state_dict, source=str(path))
    return model.to(device).eval(), cfg


# ------------------------------------------------------------------------ message helpers
def _class_count_note(
    key: str, given: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> str:
    """' — trained for 21 classes, the config builds 7' for a conf head weight, else ''."""
    matched = re.fullmatch(r"conf\.(\d+)\.weight", key)
    loc_key = f"loc.{matched.group(1)}.weight" if matched else ""
    if not matched or loc_key not in given or loc_key not in expected:
        return ""
    trained = _classes_of(given[key], given[loc_key])
    built = _classes_of(expected[key], expected[loc_key])
    if trained is None or built is None or trained == built:
        return ""
    return (f" — trained for {trained} classes, the config builds {built} "
            f"(model.num_classes, background included)")


def _classes_of(conf_weight: torch.Tensor, loc_weight: torch.Tensor) -> int | None:
    """Classes of a conf head: its outputs [A * C] over the anchors A = loc outputs / 4."""
    anchors = loc_weight.shape[0] // 4
    if anchors == 0 or conf_weight.shape[0] % anchors:
        return None
    return conf_weight.shape[0] // anchors


def _layout_hint(keys: list[str]) -> str:
    """What a state_dict with these keys is, when it is a known layout of the wrong kind."""
    if any(k.startswith("features.") for k in keys) and any(k.startswith("classifier.") for k in keys):
        return (
            "This is torchvision's ImageNet VGG16 layout (features.N / classifier.N), a "
            "classifier, not a detector: convert it with "
            f"{clone_script('convert_vgg.py', f'{TORCHVISION_VGG16_FILE} {REDUCED_FC_FILE}')} and "
            "set model.pretrained to the result."
        )
    if keys and all(re.match(r"\d+\.", key) for key in keys):
        return (
            "This is a reduced-fc VGG16 backbone (keys 0.weight ... 33.bias), not a trained "
            "detector: set model.pretrained to it to initialise training."
        )
    return ""


def _backbone_note(given: list[str], expected: list[str]) -> str:
    """'The file is for backbone vgg16; the config builds ssd7' when the prefixes say so."""

    def backbone(keys: list[str]) -> str | None:
        return next((name for prefix, name in _BACKBONE_PREFIXES.items()
                     if any(key.startswith(prefix) for key in keys)), None)

    trained, built = backbone(given), backbone(expected)
    if trained and built and trained != built:
        return f"The file is for backbone {trained}; the config builds {built} (model.backbone)."
    return ""


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove `prefix` from every key when all keys carry it (DataParallel's `module.`)."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy with its own storage (saving a view would save the whole fc6)."""
    return tensor.clone(memory_format=torch.contiguous_format)


def _shape(tensor: torch.Tensor) -> str:
    return str(list(tensor.shape))


def _preview(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED else shown or "nothing"


def _more(keys: list[str]) -> list[str]:
    return [f"    ... and {len(keys) - _MAX_LISTED} more"] if len(keys) > _MAX_LISTED else []
