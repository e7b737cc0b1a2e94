"""Pictures of the default boxes, the prior matching and hard negative mining of one image.

    python scripts/visualize.py priors --config configs/voc300.yaml --image photo.jpg [--layer 2]
    python scripts/visualize.py matches --config configs/shapes.yaml \\
        --image data/shapes/VOCshapes/JPEGImages/000000.jpg
    python scripts/visualize.py mining --config configs/shapes.yaml --weights runs/shapes/best.pth \\
        --image data/shapes/VOCshapes/JPEGImages/000000.jpg --ratio 3

priors   the default boxes of the centre cell of every feature map (or of --layer K)
matches  the ground truth and the positive default boxes matched to each object, with IoU
mining   the negatives hard negative mining keeps for the image under --weights (without
         --weights: a freshly initialised model, i.e. the start of training), as a grid of
         tiles next to the ground truth

The ground truth (matches, mining) is the VOC XML next to the image (../Annotations/<id>.xml)
or --annotation. The config comes from --weights when the file carries one, else --config
(default configs/voc300.yaml). Writes a PNG (default out/<image name>_<kind>.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import REPO_ROOT  # noqa: I001  (sets up the import path)

from ssd.cli.common import run_cli
from ssd.config import load_config, merge_overrides

DEFAULT_CONFIG = REPO_ROOT / "configs" / "voc300.yaml"
KINDS = ("priors", "matches", "mining")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS, help="what to draw")
    parser.add_argument("--image", required=True, help="the image to draw on")
    parser.add_argument("--config", help="YAML config (default: the one in --weights, else "
                                         f"{DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    parser.add_argument("--weights", help="mining: the model whose losses rank the negatives "
                                          "(default: a freshly initialised one)")
    parser.add_argument("--annotation", help="VOC XML of the image (default: "
                                             "../Annotations/<image id>.xml next to the image)")
    parser.add_argument("--layer", type=int, help="priors: only this feature map (0 = largest)")
    parser.add_argument("--ratio", type=float, help="mining: negatives per positive "
                                                    "(default: loss.neg_pos_ratio, 3)")
    parser.add_argument("--max-tiles", type=int, default=36, help="mining: tiles drawn (hardest)")
    parser.add_argument("--seed", type=int, default=0, help="mining without --weights: init seed")
    parser.add_argument("--out", type=Path, help="output PNG (default out/<image>_<kind>.png)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ssd.drawing import save_image
    from ssd.images import load_image
    from ssd.modeling.derived import resolve_priors
    from ssd.priors import priors_from_config

    image = load_image(args.image)
    model, cfg = load_model(args) if args.kind == "mining" else (None, load_settings(args))
    cfg = resolve_priors(cfg, model)  # the settings of priors left to the backbone
    priors = priors_from_config(cfg.model.priors, cfg.model.image_size)
    canvas = DRAW[args.kind](args, cfg, image, priors, model)
    out = args.out or Path("out") / f"{Path(args.image).stem}_{args.kind}.png"
    save_image(out, canvas)
    print(f"Wrote {out} ({canvas.shape[1]}x{canvas.shape[0]})")
    return 0


def load_settings(args):
    """The config of --config (default voc300) with --opts applied."""
    return merge_overrides(load_config(args.config or DEFAULT_CONFIG), args.opts)


def load_model(args):
    """(model, cfg) for mining: the --weights model, or a fresh one seeded with --seed (with
    its VGG backbone loaded when model.pretrained names an existing file, as training starts)."""
    import torch

    from ssd.modeling import build_model
    from ssd.weights import build_model_from_weights, load_vgg_backbone

    fallback = load_config(args.config or DEFAULT_CONFIG)
    if args.weights:
        model, cfg = build_model_from_weights(args.weights, cfg=fallback)
        return model, merge_overrides(cfg, args.opts)
    cfg = merge_overrides(fallback, args.opts)
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    pretrained = cfg.model.pretrained
    if pretrained and Path(pretrained).is_file():
        load_vgg_backbone(model, pretrained)
    elif pretrained:
        print(f"note: model.pretrained {pretrained} not found; the backbone is random too")
    return model, cfg


def targets_of(args, cfg):
    """The image's ground truth as the loss's target Tensor[n, 5], and the difficult objects
    training leaves out (Tensor[m, 5]; none with data.keep_difficult)."""
    from ssd.analysis import annotation_path, read_voc_objects
    from ssd.predictor import class_names_for

    xml = Path(args.annotation) if args.annotation else annotation_path(args.image)
    if not xml.is_file():
        how = "" if args.annotation else " (looked next to the image: ../Annotations/<id>.xml)"
        raise FileNotFoundError(f"Annotation not found: {xml}{how}; pass --annotation FILE.xml")
    target, difficult = read_voc_objects(xml, class_names_for(cfg))
    if cfg.data.keep_difficult:
        return target, target[:0]
    return target[~difficult], target[difficult]


def draw_priors(args, cfg, image, priors, _model):
    from ssd.visualize import draw_priors as draw

    return draw(image, priors, cfg.model.priors.feature_maps, cfg.model.priors.aspect_ratios,
                cfg.model.image_size, layer=args.layer)


def draw_matches(args, cfg, image, priors, _model):
    from ssd.analysis import prior_layers
    from ssd.predictor import class_names_for
    from ssd.visualize import draw_matches as draw

    layers = prior_layers(cfg.model.priors.feature_maps, cfg.model.priors.aspect_ratios)
    target, ignored = targets_of(args, cfg)
    return draw(image, target, priors, class_names_for(cfg), iou_threshold=cfg.loss.iou_threshold,
                layers=layers, ignored=ignored)


def draw_mining(args, cfg, image, priors, model):
    from ssd.analysis import image_confidences, prior_layers
    from ssd.predictor import class_names_for
    from ssd.visualize import draw_mining as draw

    ratio = args.ratio if args.ratio is not None else cfg.loss.neg_pos_ratio
    if ratio < 0 or args.max_tiles < 0:
        raise ValueError(f"--ratio and --max-tiles must be >= 0, got {ratio} and {args.max_tiles}")
    conf = image_confidences(model, image, cfg.model.image_size, cfg.data.mean)
    note = f"weights: {args.weights}" if args.weights else f"untrained model (seed {args.seed})"
    layers = prior_layers(cfg.model.priors.feature_maps, cfg.model.priors.aspect_ratios)
    target, ignored = targets_of(args, cfg)
    return draw(image, target, priors, conf, class_names_for(cfg), neg_pos_ratio=ratio,
                iou_threshold=cfg.loss.iou_threshold, layers=layers,
                image_size=cfg.model.image_size, max_tiles=args.max_tiles, note=note,
                ignored=ignored)


DRAW = {"priors": draw_priors, "matches": draw_matches, "mining": draw_mining}


if __name__ == "__main__":
    run_cli(main)
