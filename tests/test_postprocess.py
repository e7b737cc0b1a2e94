import math

import pytest
import torch
from conftest import needs_cuda

from ssd import postprocess
from ssd.box_utils import cxcywh_to_xyxy, decode, pairwise_iou
from ssd.config import load_config
from ssd.modeling import resolve_priors
from ssd.postprocess import PostProcessor, build_postprocessor, detect, scale_boxes
from ssd.priors import priors_from_config

# Default boxes (cx, cy, w, h): A, B overlapping A (IoU 0.68), then three apart from all.
PRIORS = torch.tensor([
    [0.30, 0.30, 0.20, 0.20],
    [0.32, 0.32, 0.20, 0.20],
    [0.80, 0.20, 0.10, 0.10],
    [0.20, 0.80, 0.10, 0.10],
    [0.80, 0.80, 0.10, 0.10],
])


def _logits(probabilities):
    """conf logits [1, P, C] whose softmax is `probabilities` ([P, C-1] foreground; the rest
    of each row is background)."""
    foreground = torch.tensor(probabilities, dtype=torch.float64)
    background = 1.0 - foreground.sum(dim=1, keepdim=True)
    return torch.cat([background, foreground], dim=1).log().float()[None]


def _detect(probabilities, **kwargs):
    loc = torch.zeros(1, len(PRIORS), 4)  # zero offsets: the boxes are the priors
    return detect(loc, _logits(probabilities), PRIORS, **kwargs)[0]


def _assert_boxes_are_priors(result, prior_indices):
    torch.testing.assert_close(result["boxes"], cxcywh_to_xyxy(PRIORS[prior_indices]))


def test_threshold_keeps_scores_above_it_with_0_based_labels():
    probabilities = [[0.0, 0.0], [0.0, 0.0], [0.6, 0.0], [0.0, 0.02], [0.005, 0.0]]
    result = _detect(probabilities, score_threshold=0.01)
    torch.testing.assert_close(result["scores"], torch.tensor([0.6, 0.02]))
    assert result["labels"].tolist() == [0, 1]  # conf columns 1 and 2
    _assert_boxes_are_priors(result, [2, 3])
    assert _detect(probabilities, score_threshold=0.03)["labels"].tolist() == [0]


def test_conf_threshold_still_works_as_the_old_name_of_score_threshold():
    probabilities = [[0.0, 0.0], [0.0, 0.0], [0.6, 0.0], [0.0, 0.02], [0.005, 0.0]]
    with pytest.warns(DeprecationWarning, match="old name of score_threshold"):
        result = _detect(probabilities, conf_threshold=0.03)
    assert result["labels"].tolist() == [0]
    with pytest.warns(DeprecationWarning):
        post = PostProcessor(conf_threshold=0.5, nms_threshold=0.45, top_k=10,
                             candidates_per_class=5, variances=(0.1, 0.2))
    assert post.score_threshold == post.conf_threshold == 0.5
    assert post == PostProcessor(0.5, 0.45, 10, 5, (0.1, 0.2))
    with pytest.warns(DeprecationWarning):
        assert build_postprocessor(load_config(), conf_threshold=0.4).score_threshold == 0.4
    with pytest.raises(TypeError, match="not both"):
        PostProcessor(0.5, 0.45, 10, 5, (0.1, 0.2), conf_threshold=0.4)


def test_nms_suppresses_overlaps_within_a_class_only():
    iou_ab = pairwise_iou(cxcywh_to_xyxy(PRIORS[:1]), cxcywh_to_xyxy(PRIORS[1:2])).item()
    assert iou_ab == pytest.approx(0.18**2 / (2 * 0.04 - 0.18**2))  # 0.68
    same_class = [[0.6, 0.0], [0.5, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    result = _detect(same_class)
    _assert_boxes_are_priors(result, [0])  # B suppressed by A
    _assert_boxes_are_priors(_detect(same_class, nms_threshold=0.7), [0, 1])  # 0.68 < 0.7
    other_class = [[0.6, 0.0], [0.0, 0.3], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    result = _detect(other_class)
    _assert_boxes_are_priors(result, [0, 1])
    assert result["labels"].tolist() == [0, 1]


def test_candidates_per_class_are_chosen_before_nms():
    # Class 0: A .5, B .4 (overlaps A), C .3, E .2 (apart); class 1: D .03. With 2 candidates
    # per class only A and B enter NMS, B is suppressed and C never competes.
    probabilities = [[0.5, 0.0], [0.4, 0.0], [0.3, 0.0], [0.0, 0.03], [0.2, 0.0]]
    result = _detect(probabilities, candidates_per_class=2)
    _assert_boxes_are_priors(result, [0, 3])
    assert result["labels"].tolist() == [0, 1]  # the limit is per class
    _assert_boxes_are_priors(_detect(probabilities, candidates_per_class=3), [0, 2, 3])
    _assert_boxes_are_priors(_detect(probabilities, candidates_per_class=0), [0, 2, 4, 3])


def test_top_k_keeps_the_highest_scores_across_classes():
    probabilities = [[0.2, 0.0], [0.0, 0.0], [0.0, 0.5], [0.3, 0.0], [0.0, 0.1]]
    result = _detect(probabilities, top_k=2)
    torch.testing.assert_close(result["scores"], torch.tensor([0.5, 0.3]))
    assert result["labels"].tolist() == [1, 0]
    assert len(_detect(probabilities, top_k=0)["scores"]) == 4  # <= 0: no limit


def test_empty_results_have_the_right_shapes():
    conf = torch.full((2, len(PRIORS), 3), -10.0)
    conf[..., 0] = 10.0  # everything background
    conf[1, 2, 2] = 30.0  # image 1 has one detection
    results = detect(torch.zeros(2, len(PRIORS), 4), conf, PRIORS)
    empty, one = results
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,)
    assert empty["labels"].shape == (0,) and empty["labels"].dtype == torch.int64
    assert empty["boxes"].dtype == torch.float32
    assert one["labels"].tolist() == [1]
    only_background = detect(torch.zeros(1, 5, 4), torch.zeros(1, 5, 1), PRIORS)[0]
    assert only_background["boxes"].shape == (0, 4)


def _reference_detect(loc, conf, priors, score_threshold, nms_threshold, top_k, candidates):
    """One image at a time, one class at a time, greedy NMS in a plain loop."""
    results = []
    for image_loc, image_conf in zip(loc.float(), conf.float()):
        boxes = decode(image_loc, priors, (0.1, 0.2))
        probabilities = image_conf.softmax(dim=-1)
        found = []  # (score, label, box)
        for label in range(1, conf.shape[-1]):
            scores = probabilities[:, label]
            order = [i for i in scores.argsort(descending=True).tolist()
                     if scores[i] > score_threshold][:candidates]
            kept = []
            for i in order:
                ious = [pairwise_iou(boxes[i:i + 1], boxes[j:j + 1]).item() for j in kept]
                if all(iou <= nms_threshold for iou in ious):
                    kept.append(i)
            found += [(scores[i].item(), label - 1, boxes[i]) for i in kept]
        found = sorted(found, key=lambda row: -row[0])[:top_k]
        results.append(found)
    return results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_straightforward_reference_on_random_inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    batch, num_priors, num_classes = 3, 120, 5
    centre = torch.rand(num_priors, 2, generator=generator)
    priors = torch.cat([centre, 0.05 + 0.3 * torch.rand(num_priors, 2, generator=generator)], 1)
    loc = 0.5 * torch.randn(batch, num_priors, 4, generator=generator)
    conf = 2.0 * torch.randn(batch, num_priors, num_classes, generator=generator)
    settings = dict(score_threshold=0.05, nms_threshold=0.45, top_k=40, candidates_per_class=25)
    results = detect(loc, conf, priors, **settings)
    expected = _reference_detect(loc, conf, priors, *settings.values())
    for result, rows in zip(results, expected):
        assert len(rows) == len(result["scores"]) > 10
        torch.testing.assert_close(result["scores"], torch.tensor([r[0] for r in rows]))
        assert result["labels"].tolist() == [r[1] for r in rows]
        torch.testing.assert_close(result["boxes"], torch.stack([r[2] for r in rows]))


def test_images_of_a_batch_are_independent():
    generator = torch.Generator().manual_seed(3)
    loc = torch.randn(4, len(PRIORS), 4, generator=generator)
    conf = torch.randn(4, len(PRIORS), 3, generator=generator)
    batched = detect(loc, conf, PRIORS)
    for i, result in enumerate(batched):
        alone = detect(loc[i:i + 1], conf[i:i + 1], PRIORS)[0]
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(result[key], alone[key])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    generator = torch.Generator().manual_seed(4)
    loc = torch.randn(2, len(PRIORS), 4, generator=generator).to(dtype)
    conf = (3 * torch.randn(2, len(PRIORS), 3, generator=generator)).to(dtype)
    low = detect(loc, conf, PRIORS.to(dtype))
    full = detect(loc.float(), conf.float(), PRIORS.to(dtype).float())
    for a, b in zip(low, full):
        assert a["boxes"].dtype == a["scores"].dtype == torch.float32
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])


def test_scale_boxes_to_pixels():
    boxes = torch.tensor([[0.0, 0.5, 0.5, 1.0], [0.1, 0.2, 0.3, 0.4]])
    expected = torch.tensor([[0.0, 150.0, 250.0, 300.0], [50.0, 60.0, 150.0, 120.0]])
    torch.testing.assert_close(scale_boxes(boxes, 500, 300), expected)
    assert scale_boxes(torch.zeros(0, 4), 500, 300).shape == (0, 4)


def test_build_postprocessor_reads_the_config_and_overrides():
    cfg = load_config(overrides=["test.top_k=50", "model.variances=[0.1, 0.25]"])
    post = build_postprocessor(cfg)
    assert post == PostProcessor(0.01, 0.45, 50, 400, (0.1, 0.25))
    post = build_postprocessor(cfg, score_threshold=0.5, nms_threshold=None)
    assert post.score_threshold == 0.5 and post.nms_threshold == 0.45
    probabilities = [[0.6, 0.0], [0.4, 0.0], [0.0, 0.0], [0.0, 0.3], [0.0, 0.0]]
    result = post(torch.zeros(1, 5, 4), _logits(probabilities), PRIORS)[0]
    assert result["labels"].tolist() == [0] and math.isclose(result["scores"].item(), 0.6,
                                                             rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------
# The two NMS forms: "loop" (torchvision per image and class) and "batched" (tensor steps)
# ---------------------------------------------------------------------------------------------


def _ssd300_outputs(batch, distribution, seed, prior_step=1):
    """loc [B, P, 4], conf [B, P, 21], priors [P, 4]: every `prior_step`-th of SSD300's 8732.

    "random": logits N(0, 3), a few confident classes per prior. "half_trained": background
    logit +3.5 over N(0, 1.2) foreground logits, so about half of the priors pass 0.01 in every
    class. "tied": half-trained logit rows drawn from a palette of 16, so many priors have
    exactly equal scores.
    """
    cfg = resolve_priors(load_config())  # SSD300: vgg16 at 300 px
    priors = priors_from_config(cfg.model.priors, cfg.model.image_size)[::prior_step]
    generator = torch.Generator().manual_seed(seed)
    loc = 0.5 * torch.randn(batch, len(priors), 4, generator=generator)
    conf = torch.randn(batch, len(priors), cfg.model.num_classes, generator=generator)
    if distribution == "random":
        conf = 3.0 * conf
    else:
        conf = 1.2 * conf
        conf[..., 0] += 3.5
    if distribution == "tied":
        palette = conf[0, :16]  # [16, C]
        conf = palette[torch.randint(0, 16, conf.shape[:2], generator=generator)]  # [B, P, C]
    return loc, conf, priors


def _assert_same_detections(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        for key in ("boxes", "scores", "labels"):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("distribution", ["random", "half_trained", "tied"])
@pytest.mark.parametrize("batch, prior_step, candidates", [(1, 1, 400), (32, 4, 60)])
def test_loop_and_batched_forms_give_identical_detections(distribution, batch, prior_step,
                                                          candidates, monkeypatch):
    monkeypatch.setattr(postprocess, "OVERLAP_CHUNK_ELEMENTS", 7 * candidates**2)  # 7 groups
    loc, conf, priors = _ssd300_outputs(batch, distribution, batch, prior_step)
    settings = dict(score_threshold=0.01, nms_threshold=0.45, candidates_per_class=candidates)
    loop = detect(loc, conf, priors, **settings, top_k=200, method="loop")
    _assert_same_detections(detect(loc, conf, priors, **settings, top_k=200, method="batched"), loop)
    everything = detect(loc, conf, priors, **settings, top_k=0, method="loop")
    _assert_same_detections(detect(loc, conf, priors, **settings, top_k=0, method="batched"),
                            everything)
    candidates_in = (conf.softmax(-1)[..., 1:] > 0.01).sum(1).clamp(max=candidates).sum(1)
    kept = torch.tensor([len(result["scores"]) for result in everything])
    assert (kept > 20).all() and (kept < candidates_in).all()  # NMS suppressed boxes
    for result in loop:  # decreasing score, equal scores by increasing label
        order = sorted(range(len(result["scores"])),
                       key=lambda i: (-result["scores"][i].item(), result["labels"][i].item()))
        assert order == list(range(len(order)))
    if distribution == "tied":
        scores = torch.cat([result["scores"] for result in loop])
        assert len(scores.unique()) < len(scores) // 2  # the ties are real


@needs_cuda
@pytest.mark.parametrize("distribution", ["random", "half_trained", "tied"])
@pytest.mark.parametrize("batch", [1, 32])
def test_batched_form_on_cuda_gives_the_cpu_loop_detections(distribution, batch):
    """detect's CUDA default (the batched form, on the GPU) against its CPU default (the
    per-image loop), on full SSD300 outputs. The GPU's float32 exp and softmax may differ from
    the CPU's in the last bits (other instruction sequences, another summation order over the
    21 classes), so boxes and scores are compared to 64 float32 ulps (2^-23 relative each);
    the detections kept, their order and labels must be the same."""
    loc, conf, priors = _ssd300_outputs(batch, distribution, seed=batch)
    settings = dict(score_threshold=0.01, nms_threshold=0.45, candidates_per_class=400, top_k=200)
    assert postprocess.nms_method("auto", torch.device("cuda"), 400) == "batched"
    expected = detect(loc, conf, priors, **settings, method="loop")
    got = detect(loc.cuda(), conf.cuda(), priors.cuda(), **settings, method="auto")
    assert len(got) == len(expected)
    float32_ulps = 64 * 2.0 ** -23
    for a, b in zip(got, expected):
        assert torch.equal(a["labels"].cpu(), b["labels"])
        torch.testing.assert_close(a["scores"].cpu(), b["scores"], rtol=float32_ulps, atol=0)
        torch.testing.assert_close(a["boxes"].cpu(), b["boxes"], rtol=float32_ulps, atol=float32_ulps)


@pytest.mark.parametrize("method", ["loop", "batched"])
def test_equal_scores_prefer_the_lower_prior_then_the_lower_class(method):
    # Priors 0 and 1 overlap (IoU 0.68) and have the same class-0 score: prior 0 is kept
    # whichever of the two boxes it is.
    tied = [[0.4, 0.0], [0.4, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    for order in ([0, 1, 2, 3, 4], [1, 0, 2, 3, 4]):
        priors = PRIORS[order]
        result = detect(torch.zeros(1, 5, 4), _logits(tied), priors, method=method)[0]
        torch.testing.assert_close(result["boxes"], cxcywh_to_xyxy(priors[:1]))
    # Equal scores in two classes: the lower class comes first, also when top_k cuts.
    across = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.3], [0.3, 0.0], [0.0, 0.0]]
    result = detect(torch.zeros(1, 5, 4), _logits(across), PRIORS, method=method)[0]
    assert result["labels"].tolist() == [0, 1]
    _assert_boxes_are_priors(result, [3, 2])
    cut = detect(torch.zeros(1, 5, 4), _logits(across), PRIORS, top_k=1, method=method)[0]
    assert cut["labels"].tolist() == [0]


@pytest.mark.parametrize("method", ["loop", "batched"])
def test_both_forms_pass_the_hand_written_cases(method):
    same_class = [[0.6, 0.0], [0.5, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    _assert_boxes_are_priors(_detect(same_class, method=method), [0])
    _assert_boxes_are_priors(_detect(same_class, nms_threshold=0.7, method=method), [0, 1])
    probabilities = [[0.5, 0.0], [0.4, 0.0], [0.3, 0.0], [0.0, 0.03], [0.2, 0.0]]
    result = _detect(probabilities, candidates_per_class=2, method=method)
    _assert_boxes_are_priors(result, [0, 3])
    _assert_boxes_are_priors(_detect(probabilities, candidates_per_class=0, method=method),
                             [0, 2, 4, 3])
    empty = detect(torch.zeros(2, 5, 4), torch.zeros(2, 5, 1), PRIORS, method=method)
    assert [r["boxes"].shape for r in empty] == [(0, 4), (0, 4)]


def test_auto_method_is_the_loop_on_cpu_and_batched_on_cuda():
    assert postprocess.nms_method("auto", torch.device("cpu"), 400) == "loop"
    assert postprocess.nms_method("auto", torch.device("cuda", 0), 400) == "batched"
    assert postprocess.nms_method("auto", torch.device("cuda", 0), 0) == "loop"
    assert postprocess.nms_method("batched", torch.device("cpu"), 400) == "batched"
    with pytest.raises(ValueError, match="method must be one of auto, loop, batched, got 'fast'"):
        detect(torch.zeros(1, 5, 4), torch.zeros(1, 5, 3), PRIORS, method="fast")


@pytest.mark.parametrize("threshold", [0.3, 0.45, 0.5, 0.7])
def test_overlap_threshold_is_compared_as_torchvision_does_in_float64(threshold):
    # torchvision's NMS compares the float32 IoU with the threshold as a double; 0.3 and 0.7
    # round up in float32, so a plain float32 comparison would disagree at IoU == float32(t).
    strict = postprocess._float32_below_or_at(threshold)
    at_threshold = torch.tensor(threshold, dtype=torch.float32)
    below = torch.nextafter(at_threshold, torch.tensor(0.0))
    above = torch.nextafter(at_threshold, torch.tensor(1.0))
    for iou in (below, at_threshold, above):
        assert bool(iou > strict) == (iou.double().item() > threshold)
