"""Transfer to another class list: shared tensors loaded, conf rows of shared classes copied."""

from pathlib import Path

import pytest
import torch

from ssd.config import load_config
from ssd.modeling import build_model
from ssd.transfer import ClassMapError, class_correspondence, transfer_weights

SMALL_CONFIG = Path(__file__).resolve().parent / "configs" / "ssd7_160.yaml"
SOURCE_CLASSES = ["person", "car", "dog", "cat", "bus"]
NEW_CLASSES = ["dog", "lorry", "person"]


def _model(class_names):
    cfg = load_config(SMALL_CONFIG, overrides=[f"model.num_classes={len(class_names) + 1}",
                                               f"data.class_names={class_names}"])
    torch.manual_seed(len(class_names))
    return build_model(cfg).eval()


def _class_rows(tensor, anchors, column):
    """Rows of one class column of a conf tensor [A*C, ...] -> [A, ...]."""
    return tensor.view(anchors, -1, *tensor.shape[1:])[:, column]  # (A*C, ...) -> (A, C, ...)


def test_correspondence_by_name_and_map():
    assert class_correspondence(NEW_CLASSES, SOURCE_CLASSES) == {0: 0, 1: 3, 3: 1}
    mapped = class_correspondence(NEW_CLASSES, SOURCE_CLASSES, {"lorry": "bus"})
    assert mapped == {0: 0, 1: 3, 2: 5, 3: 1}
    with pytest.raises(ClassMapError, match="'truck' is not one of the new classes"):
        class_correspondence(NEW_CLASSES, SOURCE_CLASSES, {"truck": "bus"})
    with pytest.raises(ClassMapError, match="'van' .* is not one of the source classes"):
        class_correspondence(NEW_CLASSES, SOURCE_CLASSES, {"lorry": "van"})


def test_shared_tensors_load_and_shared_classes_keep_their_rows(caplog):
    source, target = _model(SOURCE_CLASSES), _model(NEW_CLASSES)
    initial = {key: value.clone() for key, value in target.state_dict().items()}
    with caplog.at_level("INFO", logger="ssd.transfer"):
        report = transfer_weights(target, source.state_dict(), SOURCE_CLASSES, NEW_CLASSES)
    source_state, state = source.state_dict(), target.state_dict()
    for key in state:
        if not key.startswith("conf."):
            assert torch.equal(state[key], source_state[key]), key
    anchors = target.num_anchors_per_location()
    for head, count in enumerate(anchors):
        for suffix in ("weight", "bias"):
            key = f"conf.{head}.{suffix}"
            for new_column, old_column in {0: 0, 1: 3, 3: 1}.items():  # background, dog, person
                assert torch.equal(_class_rows(state[key], count, new_column),
                                   _class_rows(source_state[key], count, old_column))
            assert torch.equal(_class_rows(state[key], count, 2),  # lorry: not in the source
                               _class_rows(initial[key], count, 2))
    assert report.copied_classes == {"dog": "dog", "person": "person"}
    assert report.new_classes == ["lorry"]
    assert "copied classes: dog, person" in caplog.text
    assert "new classes (initialised): lorry" in caplog.text


def test_transferred_model_scores_shared_classes_like_the_source():
    source, target = _model(SOURCE_CLASSES), _model(NEW_CLASSES)
    transfer_weights(target, source.state_dict(), SOURCE_CLASSES, NEW_CLASSES)
    images = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        source_loc, source_conf = source(images)
        loc, conf = target(images)
    torch.testing.assert_close(loc, source_loc, rtol=0, atol=0)
    # Same weights, but a conv with fewer output channels may sum in another order: float32
    # rounding (2^-24 relative per addition) is the only allowed difference.
    torch.testing.assert_close(conf[..., [0, 1, 3]], source_conf[..., [0, 3, 1]], rtol=1e-5, atol=1e-5)
