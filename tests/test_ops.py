"""The kernels of ssd.ops, each bit for bit (torch.equal) against the plain computation its
module docstring states."""

import pytest
import torch
import torch.nn.functional as F

import ssd.ops.chunked_match
from ssd.box_utils import cxcywh_to_xyxy, match, pad_targets, pairwise_iou
from ssd.config import load_config
from ssd.loss import MultiBoxLoss
from ssd.modeling import resolve_priors
from ssd.ops.bipartite import bipartite_claims, first_row_reaching
from ssd.ops.chunked_match import chunk_sizes, rows_in_use
from ssd.ops.mining import background_loss, hard_negative_mask
from ssd.ops.nms import float32_below_or_at, greedy_nms_batched, greedy_nms_loop
from ssd.ops.prior_iou import prior_geometry, prior_iou
from ssd.ops.sort_keys import descending_keys
from ssd.priors import priors_from_config


def _random_priors(count, generator):
    """[count, 4] (cx, cy, w, h) priors."""
    return torch.cat([torch.rand(count, 2, generator=generator),
                      0.05 + 0.4 * torch.rand(count, 2, generator=generator)], dim=1)


# ------------------------------------------------------------------------------ prior_iou

def test_prior_iou_is_pairwise_iou_bit_for_bit():
    cfg = resolve_priors(load_config())  # SSD300: vgg16 at 300 px
    priors = cxcywh_to_xyxy(priors_from_config(cfg.model.priors, cfg.model.image_size))
    generator = torch.Generator().manual_seed(0)
    low = torch.rand(3, 5, 2, generator=generator) * 0.7
    boxes = torch.cat([low, low + 0.02 + 0.3 * torch.rand(3, 5, 2, generator=generator)], -1)
    boxes[0, 0] = priors[100]  # a box equal to a prior: IoU exactly 1
    assert torch.equal(prior_iou(boxes, priors), pairwise_iou(boxes, priors))
    assert prior_iou(boxes, priors)[0, 0, 100] == 1.0
    # Unclipped priors with negative coordinates and repeated intervals.
    odd = torch.tensor([[-0.2, -0.1, 0.3, 0.4], [-0.2, 0.5, 0.3, 0.9], [0.1, -0.1, 0.6, 0.4],
                        [-0.2, -0.1, 0.3, 0.4], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(prior_iou(boxes, odd), pairwise_iou(boxes, odd))



def test_bipartite_claims_keep_the_last_ground_truth_of_a_shared_prior():
    best_prior = torch.tensor([[3, 3, 5], [3, 0, 0]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    claimed, claimant = bipartite_claims(best_prior, valid, num_priors=10)
    assert claimed.tolist() == [3, 5, 13] and claimant.tolist() == [1, 2, 0]


def test_chunk_sizes_keep_each_chunk_within_the_budget():
    assert chunk_sizes([0, 1, 1, 2, 2, 5], num_priors=10, chunk_elements=40) == [3, 2, 1]
    assert chunk_sizes([9, 9], num_priors=10, chunk_elements=40) == [1, 1]  # one at least
    assert chunk_sizes([], num_priors=10, chunk_elements=40) == []


def test_rows_in_use_counts_up_to_the_last_valid_row():
    valid = torch.tensor([[True, False, True, False], [False] * 4, [True, True, False, False]])
    assert rows_in_use(valid).tolist() == [3, 0, 2]  # a gap does not shorten the first image


def _reference_first_row(values, target, valid):
    """The first valid row equal to the target, by a loop over the columns."""
    batch, rows, columns = values.shape
    index = torch.zeros(batch, columns, dtype=torch.long)
    for b in range(batch):
        for p in range(columns):
            hits = [r for r in range(rows) if valid[b, r] and values[b, r, p] == target[b, p]]
            index[b, p] = hits[0] if hits else 0
    return index


def test_first_row_reaching_is_the_first_valid_maximum_with_ties_and_padding():
    generator = torch.Generator().manual_seed(2)
    for rows in (1, 3, 7, 300):  # 300 rows: wider weights than uint8 holds
        values = torch.randint(0, 3, (4, rows, 9), generator=generator).float()  # many ties
        valid = torch.rand(4, rows, generator=generator) < 0.7
        valid[0] = False  # an image without valid rows
        valid[1, 0] = True
        target = values.masked_fill(~valid[:, :, None], -1).amax(dim=1)
        got = first_row_reaching(values, target, valid)
        assert torch.equal(got, _reference_first_row(values, target, valid)), rows
        # Where every row is valid this is the index max(dim=1) returns.
        full = torch.ones_like(valid)
        assert torch.equal(first_row_reaching(values, values.amax(dim=1), full),
                           values.max(dim=1).indices)


def test_bipartite_claims_equal_the_classic_loop():
    generator = torch.Generator().manual_seed(4)
    num_priors = 6  # few priors: many ground truths share their best prior
    best_prior = torch.randint(0, num_priors, (5, 7), generator=generator)
    valid = torch.rand(5, 7, generator=generator) < 0.7
    owner = {}  # flat prior -> row, the classic `best_truth_idx[best_prior_idx[j]] = j`
    for image in range(5):
        for row in range(7):
            if valid[image, row]:
                owner[image * num_priors + int(best_prior[image, row])] = row
    claimed, claimant = bipartite_claims(best_prior, valid, num_priors)
    assert torch.equal(claimed, torch.tensor(sorted(owner)))
    assert torch.equal(claimant, torch.tensor([owner[slot] for slot in sorted(owner)]))


def test_match_with_the_geometry_passed_equals_match_with_the_priors():
    generator = torch.Generator().manual_seed(5)
    priors = _random_priors(200, generator)
    low = torch.rand(3, 2, generator=generator) * 0.6
    rows = [torch.cat([low, low + 0.2, torch.zeros(3, 1)], dim=1), torch.zeros(0, 5)]
    gt, valid = pad_targets(rows)
    for got, expected in zip(match(gt[..., :4], valid, prior_geometry(priors), 0.5),
                             match(gt[..., :4], valid, priors, 0.5)):
        assert torch.equal(got, expected)


def test_loss_keeps_the_prior_geometry_until_the_priors_change():
    generator = torch.Generator().manual_seed(6)
    priors = _random_priors(50, generator)
    crit = MultiBoxLoss(num_classes=3)
    geometry = crit.prior_geometry(priors)
    assert torch.equal(geometry.corners, cxcywh_to_xyxy(priors))
    assert crit.prior_geometry(priors) is geometry  # the same priors: kept
    assert crit.prior_geometry(priors.clone()) is geometry  # equal values: kept
    priors[1, 0] += 0.1  # changed in place
    assert torch.equal(crit.prior_geometry(priors).corners, cxcywh_to_xyxy(priors))
    fewer = priors[:40]
    assert torch.equal(crit.prior_geometry(fewer).corners, cxcywh_to_xyxy(fewer))
    with torch.inference_mode():
        frozen = priors * 0.5
    assert torch.equal(crit.prior_geometry(frozen).corners, cxcywh_to_xyxy(frozen))


# --------------------------------------------------------------------------------- mining


@pytest.mark.parametrize("chunk_elements", [1, 40 * 5 * 3, 1 << 19])
def test_background_loss_is_minus_log_softmax_of_the_background(chunk_elements, monkeypatch):
    monkeypatch.setattr(ssd.ops.chunked_match, "CPU_CHUNK_ELEMENTS", chunk_elements)
    conf = 3 * torch.randn(7, 40, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(background_loss(conf), -F.log_softmax(conf, dim=-1)[..., 0])


def test_hard_negatives_equal_the_double_sort_rank_selection():
    generator = torch.Generator().manual_seed(8)
    loss = torch.rand(6, 300, generator=generator)  # distinct values
    fraction = torch.tensor([[0.0], [0.01], [0.05], [0.2], [0.5], [0.9]])
    positive = torch.rand(6, 300, generator=generator) < fraction
    for ratio in (3, 1, 0.5, 1.5):
        ranked = loss.masked_fill(positive, -1.0)
        rank = ranked.sort(dim=1, descending=True).indices.argsort(dim=1)  # [B, P]
        num_pos = positive.sum(dim=1, keepdim=True)
        num_neg = torch.minimum((num_pos.double() * ratio).ceil().long(), 300 - num_pos)
        assert torch.equal(hard_negative_mask(loss, positive, ratio), rank < num_neg)


# ------------------------------------------------------------------------- sort keys, NMS


def test_descending_keys_order_as_a_stable_descending_sort():
    generator = torch.Generator().manual_seed(9)
    values = torch.randint(0, 5, (4, 3, 50), generator=generator).float() / 7  # many ties
    for k in (1, 17, 50):
        top = descending_keys(values).topk(k, dim=-1, sorted=True).indices
        assert torch.equal(top, values.sort(dim=-1, descending=True, stable=True).indices[..., :k])


def _plain_greedy_nms(boxes, candidate, threshold):
    """Per group, walk the candidates in order; keep a box unless the float32 IoU with a box
    kept before it is above the threshold (compared in float64, as torchvision does)."""
    keep = torch.zeros_like(candidate)
    for group in range(len(boxes)):
        kept = []
        for i in range(int(candidate[group].sum())):
            ious = [pairwise_iou(boxes[group, j:j + 1], boxes[group, i:i + 1]).double().item()
                    for j in kept]
            if all(iou <= threshold for iou in ious):
                kept.append(i)
        keep[group, kept] = True
    return keep


@pytest.mark.parametrize("threshold", [0.3, 0.45, 0.7])
def test_both_nms_forms_equal_the_plain_greedy_loop(threshold):
    generator = torch.Generator().manual_seed(10)
    centre = torch.rand(6, 30, 2, generator=generator)
    size = 0.1 + 0.3 * torch.rand(6, 30, 2, generator=generator)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)  # [G, k, 4]
    boxes[0, 1] = boxes[0, 0]  # identical boxes: IoU exactly 1
    counts = torch.tensor([30, 0, 1, 12, 29, 5])
    candidate = torch.arange(30) < counts[:, None]  # a prefix of every group
    expected = _plain_greedy_nms(boxes, candidate, threshold)
    assert expected.sum() < candidate.sum()  # something was suppressed
    assert torch.equal(greedy_nms_loop(boxes, candidate, threshold), expected)
    assert torch.equal(greedy_nms_batched(boxes, candidate, threshold), expected)


@pytest.mark.parametrize("threshold", [0.3, 0.45, 0.5, 0.7])
def test_overlap_threshold_is_compared_as_torchvision_does_in_float64(threshold):
    # torchvision's NMS compares the float32 IoU with the threshold as a double; 0.3 and 0.7
    # round up in float32, so a plain float32 comparison would disagree at IoU == float32(t).
    strict = float32_below_or_at(threshold)
    at_threshold = torch.tensor(threshold, dtype=torch.float32)
    below = torch.nextafter(at_threshold, torch.tensor(0.0))
    above = torch.nextafter(at_threshold, torch.tensor(1.0))
    for iou in (below, at_threshold, above):
        assert bool(iou > strict) == (iou.double().item() > threshold)
