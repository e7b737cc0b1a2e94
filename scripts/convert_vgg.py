"""Convert torchvision's ImageNet VGG16 into the reduced-fc backbone SSD trains from.

    python scripts/convert_vgg.py vgg16-397923af.pth weights/vgg16_reducedfc.pth

conv1_1 ... conv5_3 are copied; fc6 becomes the 3x3 conv6 (dilation 6) by keeping every 4th
unit and the taps 0, 3, 6 of its 7x7 window, fc7 the 1x1 conv7 by keeping every 4th unit in
both dimensions (the "a trous" reduction of the SSD paper). The output has the keys of the
classic vgg16_reducedfc.pth (0.weight ... 33.bias) and is what model.pretrained expects.
The file is written atomically (temp file + rename).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

import torch  # noqa: E402

from ssd.fileio import atomic_torch_save  # noqa: E402
from ssd.modeling.vgg import vgg16_reducedfc_layers  # noqa: E402
from ssd.weights import check_state_dict, read_torchvision_vgg16  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="torchvision VGG16 state_dict (vgg16-397923af.pth)")
    parser.add_argument("dst", type=Path, help="output, e.g. weights/vgg16_reducedfc.pth")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state_dict = read_torchvision_vgg16(args.src)
    with torch.device("meta"):  # shapes of the SSD backbone, without allocating it
        backbone, _ = vgg16_reducedfc_layers()
    check_state_dict(backbone, state_dict, f"{args.src} (converted)",
                     target="the SSD VGG16 backbone")
    atomic_torch_save(state_dict, args.dst)
    print(describe(args.src, args.dst, state_dict))
    return 0


def describe(src: Path, dst: Path, state_dict: dict[str, torch.Tensor]) -> str:
    """A summary of the written file: tensors, parameters, and where conv6/conv7 came from."""
    conv_keys = [key for key in state_dict if key.endswith(".weight")]
    conv6, conv7 = conv_keys[-2:]
    parameters = sum(tensor.numel() for tensor in state_dict.values())
    return "\n".join([
        f"Wrote {dst} (reduced-fc VGG16 from {src}): {len(state_dict)} tensors, "
        f"{parameters:,} parameters",
        f"  conv1_1 ... conv5_3 -> {', '.join(key.split('.')[0] for key in conv_keys[:-2])}: "
        f"copied from features.*",
        f"  fc6 -> conv6 {conv6} {list(state_dict[conv6].shape)} (dilation 6): every 4th unit, "
        f"taps 0, 3, 6 of the 7x7 window",
        f"  fc7 -> conv7 {conv7} {list(state_dict[conv7].shape)}: every 4th unit in both "
        f"dimensions",
        f"Use it with model.pretrained={dst} (configs/voc300.yaml reads "
        f"weights/vgg16_reducedfc.pth).",
    ])


if __name__ == "__main__":
    from ssd.cli.common import run_cli

    run_cli(main)
