import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ssd.config import load_config
from ssd.loss import FocalLoss, MultiBoxLoss, assign_targets, build_loss, prepare_targets
from ssd.modeling import resolve_priors
from ssd.ops.mining import hard_negative_mask
from ssd.ops.reference import classic_multibox_loss, per_image_focal_loss, per_image_multibox_loss
from ssd.priors import default_boxes, priors_from_config

VARIANCES = (0.1, 0.2)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


def _small_priors():
    """92 realistic priors from three small feature maps (4x4x4 + 2x2x6 + 1x1x4)."""
    return default_boxes([4, 2, 1], 100, [25, 50, 100], [20, 45, 75], [45, 75, 100],
                         [[2], [2, 3], [2]])  # fmt: skip


def _random_batch(num_classes=5, counts=(3, 0, 1, 5, 0, 2), seed=0):
    """Random predictions and targets; images with count 0 have no objects."""
    generator = torch.Generator().manual_seed(seed)
    priors = _small_priors()
    loc = torch.randn(len(counts), len(priors), 4, generator=generator)
    conf = torch.randn(len(counts), len(priors), num_classes, generator=generator) * 2
    targets = []
    for n in counts:
        low = torch.rand(n, 2, generator=generator) * 0.6
        high = low + 0.1 + torch.rand(n, 2, generator=generator) * 0.3
        labels = torch.randint(0, num_classes - 1, (n, 1), generator=generator).float()
        targets.append(torch.cat([low, high, labels], dim=1))
    return loc, conf, priors, targets


def _leaves(*tensors):
    return [t.clone().requires_grad_() for t in tensors]


def _assert_losses_close(got, expected):
    assert set(got) == {"loss_loc", "loss_conf"}
    for name in got:
        torch.testing.assert_close(got[name], torch.as_tensor(expected[name], dtype=torch.float32),
                                   rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# MultiBoxLoss against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("neg_pos_ratio", [3, 1])
@pytest.mark.parametrize("loc_loss", ["smooth_l1", "l1"])
def test_multibox_equals_per_image_reference(neg_pos_ratio, loc_loss):
    loc, conf, priors, targets = _random_batch()
    crit = MultiBoxLoss(num_classes=5, neg_pos_ratio=neg_pos_ratio, variances=VARIANCES,
                        loc_loss=loc_loss)
    got = crit(loc, conf, priors, targets)
    expected = per_image_multibox_loss(loc, conf, priors, targets, neg_pos_ratio, loc_loss)
    assert expected["loss_conf"] > 0 and expected["loss_loc"] > 0
    _assert_losses_close(got, expected)


def test_multibox_gradients_equal_reference():
    loc, conf, priors, targets = _random_batch(seed=1)
    loc_a, conf_a, loc_b, conf_b = _leaves(loc, conf, loc, conf)
    got = MultiBoxLoss(num_classes=5)(loc_a, conf_a, priors, targets)
    expected = per_image_multibox_loss(loc_b, conf_b, priors, targets)
    (got["loss_loc"] + got["loss_conf"]).backward()
    (expected["loss_loc"] + expected["loss_conf"]).backward()
    torch.testing.assert_close(loc_a.grad, loc_b.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conf_a.grad, conf_b.grad, rtol=1e-5, atol=1e-6)


def test_loc_weight_scales_only_the_localisation_term():
    loc, conf, priors, targets = _random_batch(seed=2)
    plain = MultiBoxLoss(num_classes=5)(loc, conf, priors, targets)
    weighted = MultiBoxLoss(num_classes=5, loc_weight=2.5)(loc, conf, priors, targets)
    torch.testing.assert_close(weighted["loss_loc"], 2.5 * plain["loss_loc"])
    torch.testing.assert_close(weighted["loss_conf"], plain["loss_conf"])


# ---------------------------------------------------------------------------------------------
# A hand-checked tiny case: 3 priors, 1 box, 3 classes (2 foreground + background)
# ---------------------------------------------------------------------------------------------


def _tiny_case():
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5],   # 0: exactly the box -> positive
                           [0.75, 0.75, 0.5, 0.5],   # 1: disjoint, background loss log 3
                           [0.75, 0.25, 0.5, 0.5]])  # 2: disjoint, background loss log 5
    targets = [torch.tensor([[0.0, 0.0, 0.5, 0.5, 1.0]])]  # foreground class 1 -> label 2
    loc = torch.zeros(1, 3, 4)
    loc[0, 0, 0] = 0.5  # the positive's only error: smooth L1 0.125, L1 0.5
    loc[0, 1:] = 7.0  # negatives' offsets never count
    conf = torch.zeros(1, 3, 3)  # prior 0: CE for label 2 = log 3
    conf[0, 2, 1] = math.log(3.0)  # prior 2: background CE = log(1 + 3 + 1)
    return loc, conf, priors, targets


@pytest.mark.parametrize("neg_pos_ratio, conf_terms", [
    (0, [math.log(3)]),                             # positives only
    (1, [math.log(3), math.log(5)]),                # the hardest negative
    (3, [math.log(3), math.log(5), math.log(3)]),   # 3 wanted, capped at the 2 negatives
])  # fmt: skip
def test_tiny_case_mining_count(neg_pos_ratio, conf_terms):
    loc, conf, priors, targets = _tiny_case()
    losses = MultiBoxLoss(num_classes=3, neg_pos_ratio=neg_pos_ratio)(loc, conf, priors, targets)
    torch.testing.assert_close(losses["loss_conf"], torch.tensor(sum(conf_terms)))
    torch.testing.assert_close(losses["loss_loc"], torch.tensor(0.125))


def test_tiny_case_l1_localisation():
    loc, conf, priors, targets = _tiny_case()
    losses = MultiBoxLoss(num_classes=3, loc_loss="l1")(loc, conf, priors, targets)
    torch.testing.assert_close(losses["loss_loc"], torch.tensor(0.5))


def test_tiny_case_assignment():
    _, _, priors, targets = _tiny_case()
    gt, valid = prepare_targets(targets, num_classes=3)
    assigned = assign_targets(gt, valid, priors, 0.5, VARIANCES)
    assert assigned.labels.tolist() == [[2, 0, 0]]
    assert assigned.positive.tolist() == [[True, False, False]]
    torch.testing.assert_close(assigned.loc_targets, torch.zeros(1, 4))


# ---------------------------------------------------------------------------------------------
# Hard negative mining
# ---------------------------------------------------------------------------------------------


def test_mined_negatives_are_exactly_the_top_k_by_loss():
    generator = torch.Generator().manual_seed(3)
    background_loss = torch.rand(5, 200, generator=generator)
    positive = torch.rand(5, 200, generator=generator) < torch.tensor([[0.0], [0.02], [0.1], [0.3], [0.9]])
    negative = hard_negative_mask(background_loss, positive, neg_pos_ratio=3)
    for i in range(5):
        num_pos = int(positive[i].sum())
        expected_count = min(3 * num_pos, 200 - num_pos)
        candidates = (~positive[i]).nonzero().flatten()
        hardest = candidates[background_loss[i, candidates].argsort(descending=True)[:expected_count]]
        assert sorted(negative[i].nonzero().flatten().tolist()) == sorted(hardest.tolist())
    assert not (negative & positive).any()
    assert negative[0].sum() == 0  # no positives, no negatives
    assert negative[4].sum() == (~positive[4]).sum()  # capped at every negative


@pytest.mark.parametrize("num_pos, neg_pos_ratio, expected", [
    (3, 1.5, 5),   # 4.5 -> 5 (a rank below ratio * count, as the classic port and torchvision)
    (1, 0.5, 1),   # 0.5 -> 1
    (2, 1.5, 3),   # exact products keep exactly that many
    (4, 3, 12),    # the default integer ratio: unchanged
])  # fmt: skip
def test_fractional_neg_pos_ratio_keeps_the_ceiling(num_pos, neg_pos_ratio, expected):
    background_loss = torch.arange(40, dtype=torch.float32)[None]  # [1, 40]
    positive = torch.zeros(1, 40, dtype=torch.bool)
    positive[0, :num_pos] = True
    negative = hard_negative_mask(background_loss, positive, neg_pos_ratio=neg_pos_ratio)
    assert int(negative.sum()) == expected
    assert negative[0, 40 - expected:].all()  # the hardest ones


def test_mining_inside_the_loss_matches_double_sort_selection():
    _, conf, priors, targets = _random_batch(seed=4)
    crit = MultiBoxLoss(num_classes=5)
    gt, valid = prepare_targets(targets, 5)
    positive = assign_targets(gt, valid, priors, 0.5, VARIANCES).positive
    mined = crit.mine_negatives(conf, positive)
    background_loss = -F.log_softmax(conf, dim=-1)[..., 0].masked_fill(positive, -1.0)
    _, order = background_loss.sort(dim=1, descending=True)
    _, rank = order.sort(dim=1)
    num_neg = torch.minimum(3 * positive.sum(1, keepdim=True), (~positive).sum(1, keepdim=True))
    assert torch.equal(mined, rank < num_neg)
    assert mined.any()


# ---------------------------------------------------------------------------------------------
# N = 0 and gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("crit", [MultiBoxLoss(num_classes=5), FocalLoss(num_classes=5)])
def test_batch_without_objects_is_finite(crit):
    loc, conf, priors, _ = _random_batch()
    loc, conf = _leaves(loc, conf)
    targets = [torch.zeros(0, 5), torch.zeros(0)] + [torch.empty(0, 5)] * (len(loc) - 2)
    losses = crit(loc, conf, priors, targets)
    (losses["loss_loc"] + losses["loss_conf"]).backward()
    assert losses["loss_loc"].item() == 0.0
    assert torch.isfinite(losses["loss_conf"]) and torch.isfinite(conf.grad).all()
    if isinstance(crit, MultiBoxLoss):  # nothing positive, nothing mined
        assert losses["loss_conf"].item() == 0.0
    else:  # every prior is background: the focal sum over all priors, divided by 1
        expected = per_image_focal_loss(conf.detach(), priors, [torch.zeros(0, 5)] * len(loc), 0.25, 2.0)
        torch.testing.assert_close(losses["loss_conf"], expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_only_positive_loc_and_selected_conf():
    loc, conf, priors, targets = _random_batch(seed=5)
    loc, conf = _leaves(loc, conf)
    crit = MultiBoxLoss(num_classes=5)
    losses = crit(loc, conf, priors, targets)
    (losses["loss_loc"] + losses["loss_conf"]).backward()
    gt, valid = prepare_targets(targets, 5)
    positive = assign_targets(gt, valid, priors, 0.5, VARIANCES).positive
    selected = positive | crit.mine_negatives(conf.detach(), positive)
    assert torch.equal(loc.grad.abs().sum(-1) > 0, positive)
    assert torch.equal(conf.grad.abs().sum(-1) > 0, selected)
    assert selected.sum() > positive.sum() > 0


# ---------------------------------------------------------------------------------------------
# Focal loss
# ---------------------------------------------------------------------------------------------


def test_focal_equals_its_formula_on_tiny_case():
    loc, conf, priors, targets = _tiny_case()
    alpha, gamma = 0.25, 2.0
    losses = FocalLoss(num_classes=3, alpha=alpha, gamma=gamma)(loc, conf, priors, targets)
    # p_t per prior: positive (label 2) 1/3; background 1/3; background 1/5.
    terms = [alpha * (1 - 1 / 3) ** gamma * math.log(3),
             (1 - alpha) * (1 - 1 / 3) ** gamma * math.log(3),
             (1 - alpha) * (1 - 1 / 5) ** gamma * math.log(5)]  # fmt: skip
    torch.testing.assert_close(losses["loss_conf"], torch.tensor(sum(terms)))
    torch.testing.assert_close(losses["loss_loc"], torch.tensor(0.125))


def test_focal_with_gamma_zero_is_weighted_cross_entropy():
    loc, conf, priors, targets = _tiny_case()
    losses = FocalLoss(num_classes=3, alpha=0.5, gamma=0.0)(loc, conf, priors, targets)
    torch.testing.assert_close(losses["loss_conf"], torch.tensor(0.5 * (2 * math.log(3) + math.log(5))))


def test_focal_equals_reference_on_random_batch():
    loc, conf, priors, targets = _random_batch(seed=6, counts=(2, 0, 4))
    losses = FocalLoss(num_classes=5, alpha=0.3, gamma=1.5)(loc, conf, priors, targets)
    expected = per_image_focal_loss(conf, priors, targets, 0.3, 1.5)
    torch.testing.assert_close(losses["loss_conf"], expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _good_rows():
    return [[0.1, 0.1, 0.4, 0.5, 0.0], [0.5, 0.5, 0.9, 0.8, 3.0], [0.0, 0.2, 1.0, 0.7, 1.0]]


@pytest.mark.parametrize("bad_row, message", [
    ([0.1, 0.1, 0.4, 0.5, -1.0], "label outside [0, 3]"),
    ([0.1, 0.1, 0.4, 0.5, 4.0], "label outside [0, 3]"),
    ([0.1, 0.1, 0.4, 0.5, 1.5], "not a whole number"),
    ([0.4, 0.1, 0.4, 0.5, 0.0], "xmax > xmin"),
    ([0.5, 0.1, 0.4, 0.5, 0.0], "xmax > xmin"),
    ([0.1, 0.5, 0.4, 0.5, 0.0], "ymax > ymin"),
    ([0.1, 0.6, 0.4, 0.5, 0.0], "ymax > ymin"),
    ([-0.01, 0.1, 0.4, 0.5, 0.0], "outside [0, 1]"),
    ([0.1, 0.1, 1.01, 0.5, 0.0], "outside [0, 1]"),
    ([10.0, 20.0, 200.0, 300.0, 0.0], "outside [0, 1]"),
    ([0.1, float("nan"), 0.4, 0.5, 0.0], "not finite"),
])  # fmt: skip
def test_bad_target_names_image_and_row(bad_row, message):
    rows = _good_rows()
    rows.insert(2, bad_row)
    targets = [torch.tensor(_good_rows()), torch.tensor(rows)]
    loc, conf = torch.zeros(2, 92, 4), torch.zeros(2, 92, 5)
    with pytest.raises(ValueError) as error:
        MultiBoxLoss(num_classes=5)(loc, conf, _small_priors(), targets)
    text = str(error.value)
    assert "targets[1] row 2" in text and message in text


def test_wrong_target_shape_names_image():
    targets = [torch.tensor(_good_rows()), torch.zeros(3, 4)]
    loc, conf = torch.zeros(2, 92, 4), torch.zeros(2, 92, 5)
    with pytest.raises(ValueError, match=r"targets\[1\] must have shape \[n, 5\]"):
        MultiBoxLoss(num_classes=5)(loc, conf, _small_priors(), targets)


def test_valid_edge_cases_are_accepted():
    rows = [[-0.0005, 0.0, 1.0005, 1.0, 3.0], [0.2, 0.2, 0.3, 0.3, 0.0]]  # within the tolerance
    targets = [torch.tensor(rows), torch.zeros(0, 5), torch.zeros(0)]
    loc, conf = torch.zeros(3, 92, 4), torch.zeros(3, 92, 5)
    losses = MultiBoxLoss(num_classes=5)(loc, conf, _small_priors(), targets)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("loc_shape, conf_shape, priors_shape, num_targets, message", [
    ((2, 92, 4), (2, 92, 6), (92, 4), 2, "conf must have shape [2, 92, 5]"),
    ((2, 92, 4), (2, 91, 5), (92, 4), 2, "conf must have shape [2, 92, 5]"),
    ((2, 92, 4), (2, 92, 5), (91, 4), 2, "priors must have shape [92, 4]"),
    ((2, 92, 4), (2, 92, 5), (92, 4), 3, "3 targets for a batch of 2"),
])  # fmt: skip
def test_shape_errors(loc_shape, conf_shape, priors_shape, num_targets, message):
    targets = [torch.zeros(0, 5)] * num_targets
    with pytest.raises(ValueError) as error:
        MultiBoxLoss(num_classes=5)(torch.zeros(loc_shape), torch.zeros(conf_shape),
                                    torch.rand(priors_shape), targets)
    assert message in str(error.value)


# ---------------------------------------------------------------------------------------------
# Config, autocast
# ---------------------------------------------------------------------------------------------


def test_build_loss_defaults_are_multibox():
    crit = build_loss(load_config())
    assert type(crit) is MultiBoxLoss
    assert (crit.num_classes, crit.neg_pos_ratio, crit.iou_threshold) == (21, 3, 0.5)
    assert (crit.variances, crit.loc_loss, crit.loc_weight) == ((0.1, 0.2), "smooth_l1", 1.0)


def test_focal_and_l1_selectable_from_yaml(tmp_path):
    path = tmp_path / "focal.yaml"
    path.write_text("model:\n  num_classes: 5\n  variances: [0.1, 0.25]\n"
                    "loss:\n  name: focal\n  loc_loss: l1\n  alpha: 0.4\n  gamma: 1.0\n")
    crit = build_loss(load_config(path))
    assert type(crit) is FocalLoss
    assert (crit.num_classes, crit.variances, crit.loc_loss) == (5, (0.1, 0.25), "l1")
    assert (crit.alpha, crit.gamma) == (0.4, 1.0)
    loc, conf, priors, targets = _random_batch(seed=7)
    torch.testing.assert_close(crit(loc, conf, priors, targets)["loss_conf"],
                               per_image_focal_loss(conf, priors, targets, 0.4, 1.0), rtol=1e-5, atol=1e-5)


def test_multibox_options_from_overrides():
    cfg = load_config(overrides=["loss.neg_pos_ratio=1", "loss.loc_loss=l1", "model.num_classes=5"])
    crit = build_loss(cfg)
    loc, conf, priors, targets = _random_batch(seed=8)
    expected = per_image_multibox_loss(loc, conf, priors, targets, neg_pos_ratio=1, loc_loss="l1")
    _assert_losses_close(crit(loc, conf, priors, targets), expected)


@pytest.mark.parametrize("crit", [MultiBoxLoss(num_classes=5), FocalLoss(num_classes=5)])
def test_bfloat16_autocast_computes_in_float32(crit):
    loc, conf, priors, targets = _random_batch(seed=9)
    loc, conf = loc.bfloat16(), conf.bfloat16()
    expected = crit(loc.float(), conf.float(), priors, targets)
    loc_leaf, conf_leaf = _leaves(loc, conf)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = crit(loc_leaf, conf_leaf, priors, targets)
        (losses["loss_loc"] + losses["loss_conf"]).backward()
    for name, value in losses.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-6)
    assert conf_leaf.grad.dtype == torch.bfloat16 and torch.isfinite(conf_leaf.grad.float()).all()


def test_build_loss_unknown_name_lists_known():
    cfg = load_config()
    fake = SimpleNamespace(loss=SimpleNamespace(**{**cfg.loss.to_dict(), "name": "hinge"}), model=cfg.model)
    with pytest.raises(ValueError, match="No loss named 'hinge'; known: multibox, focal"):
        build_loss(fake)


# ---------------------------------------------------------------------------------------------
# The classic port's algorithm (the speed benchmark's baseline) gives the same loss
# ---------------------------------------------------------------------------------------------


def _ssd300_batch(priors, batch, seed, num_classes=21):
    """Random loc [B, P, 4], conf [B, P, C] and 3-6 random objects in every image."""
    generator = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, len(priors), 4, generator=generator)
    conf = torch.randn(batch, len(priors), num_classes, generator=generator)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(3, 7, (), generator=generator))
        low = torch.rand(n, 2, generator=generator) * 0.65
        size = 0.05 + torch.rand(n, 2, generator=generator) * 0.3
        labels = torch.randint(0, num_classes - 1, (n, 1), generator=generator).float()
        targets.append(torch.cat([low, low + size, labels], dim=1))
    return loc, conf, targets


@pytest.mark.parametrize("seed", [0, 1])
def test_multibox_equals_the_classic_algorithm_on_ssd300_priors(seed):
    cfg = resolve_priors(load_config())  # SSD300: vgg16 at 300 px
    priors = priors_from_config(cfg.model.priors, cfg.model.image_size)
    loc, conf, targets = _ssd300_batch(priors, batch=4, seed=seed)
    loc_a, conf_a, loc_b, conf_b = _leaves(loc, conf, loc, conf)
    got = MultiBoxLoss(num_classes=cfg.model.num_classes)(loc_a, conf_a, priors, targets)
    expected = classic_multibox_loss(loc_b, conf_b, priors, targets)
    assert expected["loss_conf"] > 0 and expected["loss_loc"] > 0
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    (got["loss_loc"] + got["loss_conf"]).backward()
    (expected["loss_loc"] + expected["loss_conf"]).backward()
    torch.testing.assert_close(loc_a.grad, loc_b.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(conf_a.grad, conf_b.grad, rtol=1e-5, atol=1e-7)


def test_multibox_equals_the_classic_algorithm_on_small_priors():
    loc, conf, priors, targets = _random_batch(counts=(3, 1, 5, 2, 4), seed=10)
    got = MultiBoxLoss(num_classes=5)(loc, conf, priors, targets)
    expected = classic_multibox_loss(loc, conf, priors, targets)
    _assert_losses_close(got, expected)
