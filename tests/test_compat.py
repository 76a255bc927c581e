"""bench.runtime.torchvision_compat: torchvision imports on CPU torch, with a correct greedy NMS behind its operators."""

import importlib
import sys

import pytest
import torch

from bench.runtime import torchvision_compat as compat


def test_import_torchvision_twice_returns_the_same_module():
    first = compat.import_torchvision()
    active = compat.cpu_nms_fallback_active()
    second = compat.import_torchvision()
    assert second is first is sys.modules["torchvision"]
    assert compat.cpu_nms_fallback_active() == active
    # The modules the metric libraries need are importable afterwards.
    import torchvision.models  # noqa: F401
    import torchvision.transforms  # noqa: F401


def test_nms_operator_keeps_the_expected_boxes():
    compat.import_torchvision()
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # score 0.9: kept
            [1.0, 1.0, 11.0, 11.0],  # IoU 81/119 = 0.68 with box 0: dropped
            [20.0, 20.0, 30.0, 30.0],  # disjoint: kept
            [0.0, 0.0, 10.0, 5.0],  # IoU 0.5 with box 0: not above 0.5, kept
            [21.0, 20.0, 31.0, 30.0],  # IoU 90/110 = 0.82 with box 2 (higher score): dropped
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2])
    keep = torch.ops.torchvision.nms(boxes, scores, 0.5)
    assert keep.dtype == torch.int64
    assert keep.tolist() == [0, 3, 2]
    # A threshold below 0.5 also suppresses the half-overlapping box.
    assert torch.ops.torchvision.nms(boxes, scores, 0.49).tolist() == [0, 2]


def test_greedy_nms_matches_integer_boxes_of_qnms():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.uint8)
    scores = torch.tensor([200, 250, 10], dtype=torch.uint8)
    assert compat.greedy_nms(boxes, scores, 0.5).tolist() == [1, 2]
    compat.import_torchvision()
    if compat.cpu_nms_fallback_active():
        assert torch.ops.torchvision.qnms(boxes, scores, 0.5).tolist() == [1, 2]


def test_greedy_nms_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\], got \[3, 5\]"):
        compat.greedy_nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"scores must have shape \[3\]"):
        compat.greedy_nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


def test_other_import_errors_propagate_unchanged(monkeypatch):
    failure = RuntimeError("operator torchvision::roi_align does not exist")

    def fail(name):
        raise failure

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(RuntimeError) as caught:
        compat.import_torchvision()
    assert caught.value is failure
