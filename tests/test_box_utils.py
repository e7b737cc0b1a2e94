import torch

from ssd.box_utils import (
    cxcywh_to_xyxy,
    decode,
    encode,
    match,
    pad_targets,
    pairwise_iou,
    xyxy_to_cxcywh,
)


def test_conversions_round_trip():
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
    centre = xyxy_to_cxcywh(boxes)
    torch.testing.assert_close(centre[0], torch.tensor([0.3, 0.55, 0.4, 0.7]))
    torch.testing.assert_close(cxcywh_to_xyxy(centre), boxes)


def test_iou_hand_written():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    expected = torch.tensor([[1 / 7, 1.0, 0.0], [0.0, 0.25, 0.0]])
    torch.testing.assert_close(pairwise_iou(a, b), expected)


def test_iou_batched_broadcast():
    a = torch.rand(3, 5, 2)
    a = torch.cat([a, a + torch.rand(3, 5, 2)], dim=-1)
    b = torch.tensor([[0.2, 0.2, 0.6, 0.7], [0.0, 0.1, 0.3, 0.3]])
    batched = pairwise_iou(a, b)
    assert batched.shape == (3, 5, 2)
    for i in range(3):
        torch.testing.assert_close(batched[i], pairwise_iou(a[i], b))


def test_encode_decode_round_trip():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.1, 0.8, 0.05, 0.1], [0.7, 0.3, 0.4, 0.4]])
    boxes = torch.tensor([[[0.35, 0.3, 0.7, 0.6], [0.05, 0.7, 0.2, 0.95], [0.6, 0.1, 0.9, 0.5]]])
    offsets = encode(boxes, priors, (0.1, 0.2))
    torch.testing.assert_close(decode(offsets, priors, (0.1, 0.2)), boxes)
    # A box equal to its prior encodes to zero offsets.
    zero = encode(cxcywh_to_xyxy(priors), priors, (0.1, 0.2))
    torch.testing.assert_close(zero, torch.zeros(3, 4), atol=1e-5, rtol=0)


def _priors_xyxy(xyxy):
    return xyxy_to_cxcywh(torch.tensor(xyxy))


def test_match_threshold_bipartite_and_competition():
    priors = _priors_xyxy([
        [0.0, 0.0, 0.4, 0.4],   # 0: IoU 1 with gt A
        [0.0, 0.0, 0.5, 0.4],   # 1: IoU 0.8 with A
        [0.6, 0.6, 1.0, 1.0],   # 2: gt B's best prior, IoU 0.16 < 0.5
        [0.45, 0.0, 0.9, 0.4],  # 3: overlaps nothing much
    ])  # fmt: skip
    gt_a = [0.0, 0.0, 0.4, 0.4, 3.0]
    gt_b = [0.8, 0.8, 0.96, 0.96, 1.0]
    gt, valid = pad_targets([torch.tensor([gt_a, gt_b]), torch.zeros(0, 5)])
    index, positive, iou = match(gt[..., :4], valid, priors, iou_threshold=0.5)
    assert positive[0].tolist() == [True, True, True, False]
    assert index[0, :3].tolist() == [0, 0, 1]
    torch.testing.assert_close(iou[0, :3], torch.tensor([1.0, 0.8, 0.16]))
    assert not positive[1].any()  # the image without objects is all background


def test_match_two_objects_competing_for_one_prior():
    priors = _priors_xyxy([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.1, 0.1]])
    # Both objects' best prior is prior 0; the later object keeps it (classic behaviour), the
    # earlier one has no prior above the threshold left.
    targets = torch.tensor([[0.0, 0.0, 0.9, 0.9, 0.0], [0.05, 0.05, 1.0, 1.0, 1.0]])
    gt, valid = pad_targets([targets])
    index, positive, _ = match(gt[..., :4], valid, priors, iou_threshold=0.5)
    assert index[0, 0].item() == 1 and positive[0, 0]
    assert not positive[0, 1]


def test_match_in_chunks_of_images_equals_the_whole_batch():
    generator = torch.Generator().manual_seed(1)
    priors = torch.cat([torch.rand(300, 2, generator=generator),
                        0.05 + 0.4 * torch.rand(300, 2, generator=generator)], dim=1)
    rows = []
    for count in (3, 0, 1, 4, 2):
        low = torch.rand(count, 2, generator=generator) * 0.6
        rows.append(torch.cat([low, low + 0.1 + 0.3 * torch.rand(count, 2, generator=generator),
                               torch.zeros(count, 1)], dim=1))
    gt, valid = pad_targets(rows)
    whole = match(gt[..., :4], valid, priors, 0.5)
    for elements in (1, 300 * 4, 300 * 7, 10**6):  # one image per chunk ... all in one
        for got, expected in zip(match(gt[..., :4], valid, priors, 0.5, chunk_elements=elements),
                                 whole):
            assert torch.equal(got, expected)
    assert whole[1].any() and not whole[1][1].any()  # positives, none in the empty image


def test_match_with_a_zero_threshold_leaves_images_without_objects_all_background():
    priors = torch.tensor([[0.3, 0.3, 0.4, 0.4], [0.7, 0.7, 0.2, 0.2]])
    gt, valid = pad_targets([torch.tensor([[0.1, 0.1, 0.5, 0.5, 0.0]]), torch.zeros(0, 5)])
    _, positive, _ = match(gt[..., :4], valid, priors, iou_threshold=0.0)
    assert positive[0].all() and not positive[1].any()


def test_match_ignores_what_padding_rows_hold():
    generator = torch.Generator().manual_seed(3)
    priors = torch.cat([torch.rand(200, 2, generator=generator),
                        0.05 + 0.4 * torch.rand(200, 2, generator=generator)], dim=1)
    priors[:2] = torch.tensor([[0.3, 0.35, 0.4, 0.5], [0.32, 0.35, 0.4, 0.5]])  # IoU 1, 0.9
    rows = [torch.tensor([[0.1, 0.1, 0.5, 0.6, 0.0], [0.1, 0.1, 0.5, 0.6, 1.0]]),  # a tie
            torch.zeros(0, 5), torch.tensor([[0.4, 0.3, 0.9, 0.8, 2.0]])]
    gt, valid = pad_targets(rows)
    expected = match(gt[..., :4], valid, priors, 0.5)
    garbage = gt.clone()
    garbage[~valid] = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0])  # a box overlapping every prior
    for got, want in zip(match(garbage[..., :4], valid, priors, 0.5), expected):
        assert torch.equal(got, want)
    index, positive, _ = expected
    # Equal IoU: the first object wins, except on the prior the bipartite step gives the later.
    assert index[0, 0] == 1 and positive[0, 0]
    assert index[0, 1] == 0 and positive[0, 1]
    assert not positive[1].any() and (index[1] == 0).all()


def test_decode_clamps_a_diverged_size_offset_to_finite_boxes():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.1]])
    offsets = torch.tensor([[[0.0, 0.0, 1e4, -1e4], [0.0, 0.0, float("inf"), 3e3]]])  # exp overflows
    boxes = decode(offsets, priors, (0.1, 0.2))
    assert torch.isfinite(boxes).all()
    sizes = boxes[..., 2:] - boxes[..., :2]
    torch.testing.assert_close(sizes[0, 0, 0], torch.tensor(0.2 * 1000 / 16))  # capped growth
    torch.testing.assert_close(sizes[0, 0, 1], torch.tensor(0.1 * torch.exp(torch.tensor(-2e3))))
    torch.testing.assert_close(sizes[0, 1], torch.tensor([0.2, 0.1]) * 1000 / 16)


def test_decode_leaves_ordinary_offsets_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    priors = torch.rand(50, 4, generator=generator) * 0.5 + 0.1
    offsets = torch.randn(3, 50, 4, generator=generator) * 5  # sizes up to exp(+-3) times the prior
    centre = priors[:, :2] + offsets[..., :2] * 0.1 * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(offsets[..., 2:] * 0.2)
    expected = cxcywh_to_xyxy(torch.cat([centre, size], dim=-1))
    assert torch.equal(decode(offsets, priors, (0.1, 0.2)), expected)
