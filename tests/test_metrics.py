import numpy as np
import pytest

from hrvit_mobile.metrics import ConfusionMatrix, cosine_similarity, miou, sqnr_db, upsample_class_map


def test_miou_known_answer():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    # class 0: tp 1, fp 1 (target 2 -> 0), fn 1 (target 0 -> 1) -> 1/3
    # class 1: tp 2, fp 1 -> 2/3 ; class 2: tp 1, fn 1 -> 1/2 ; ignored pixels skipped
    assert miou(pred, target, 3) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    cm = ConfusionMatrix(3).update(pred, target)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    assert miou(target, target, 3) == 1.0


def test_absent_class_is_not_counted():
    assert miou(np.array([0, 0, 1]), np.array([0, 0, 1]), 5) == 1.0


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="outside"):
        ConfusionMatrix(2).update(np.array([0]), np.array([3]))


def test_sqnr_and_cosine():
    ref = np.ones(100)
    assert sqnr_db(ref, ref) == float("inf")
    assert sqnr_db(ref + 0.1, ref) == pytest.approx(20.0)  # noise power 1% of signal
    assert cosine_similarity(ref, 2 * ref) == pytest.approx(1.0)
    assert cosine_similarity(ref, -ref) == pytest.approx(-1.0)


def test_upsample_class_map():
    logits = np.zeros((1, 2, 2, 2), np.float32)
    logits[0, 1, :, 1] = 1.0  # right column is class 1
    cmap = upsample_class_map(logits, (4, 4))
    assert cmap.shape == (1, 4, 4)
    assert (cmap[0, :, 0] == 0).all() and (cmap[0, :, 3] == 1).all()
