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


# the boundaries and messages of the refusals, and the paths a mutation of the metrics would change


def test_class_count_and_label_bounds_are_checked_at_their_edges():
    assert ConfusionMatrix(1).update(np.zeros(3), np.zeros(3)).miou() == 1.0  # one class is a model
    with pytest.raises(ValueError, match=r"num_classes must be >= 1, got 0"):
        ConfusionMatrix(0)
    cm = ConfusionMatrix(2)
    assert cm.matrix.dtype == np.int64
    with pytest.raises(ValueError, match=r"prediction has 3 pixels, target 2"):
        cm.update(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"target labels outside 0\.\.1 \(and 255\)"):
        cm.update(np.array([0]), np.array([2]))  # == num_classes
    with pytest.raises(ValueError, match=r"target labels outside"):
        cm.update(np.array([0]), np.array([-1]))
    with pytest.raises(ValueError, match=r"predicted classes outside 0\.\.1$"):
        cm.update(np.array([2]), np.array([0]))
    with pytest.raises(ValueError, match=r"predicted classes outside"):
        cm.update(np.array([-1]), np.array([1]))
    assert cm.matrix.sum() == 0  # nothing counted from refused updates


def test_updates_accumulate_and_a_single_pixel_class_counts():
    cm = ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, 1]))
    cm.update(np.array([2, 0]), np.array([2, 1]))
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    # class 2: one pixel, predicted right (union 1) -> IoU 1; class 0: 1/2; class 1: 1/2
    np.testing.assert_allclose(cm.iou(), [0.5, 0.5, 1.0])
    assert cm.miou() == pytest.approx(2 / 3) and cm.pixel_accuracy() == pytest.approx(3 / 4)


def test_nothing_counted_is_nan_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings on empty classes
        cm = ConfusionMatrix(3)
        assert np.isnan(cm.miou()) and np.isnan(cm.pixel_accuracy()) and np.isnan(cm.iou()).all()
        only_ignored = ConfusionMatrix(3).update(np.array([0, 1]), np.array([255, 255]))
        assert np.isnan(only_ignored.miou())
        assert ConfusionMatrix(3).update(np.array([0]), np.array([1])).iou()[2] != 0  # absent: NaN


def test_miou_takes_its_class_count_and_ignore_label():
    # label 9 ignored; with the default ignore label (255) 9 would be a label outside 0..2
    assert miou(np.array([0, 1, 2]), np.array([0, 1, 9]), 3, ignore_index=9) == 1.0
    with pytest.raises(ValueError, match="outside"):
        miou(np.array([0, 1, 2]), np.array([0, 1, 9]), 3)


def test_sqnr_on_known_values_and_edges():
    ref = np.full((2, 3), 2.0)
    out = ref.ravel() + 0.2  # flat output against a 2-D reference: compared element by element
    # signal 6 * 4 = 24, noise 6 * 0.04 = 0.24 -> 10 log10(100) = 20 dB
    assert sqnr_db(out, ref) == pytest.approx(20.0)
    assert sqnr_db(ref * 1.5, ref) == pytest.approx(10 * np.log10(4 / 1))  # noise 1 per element, signal 4
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided, not a division by zero
        assert sqnr_db(np.ones(4), np.zeros(4)) == float("-inf")  # nothing to measure against
    assert sqnr_db(np.zeros(4), np.zeros(4)) == float("inf")
    # integer inputs are measured in float64, not in their own (overflowing) type
    big = np.array([100, -100], np.int8)
    assert sqnr_db(big, np.array([90, -90], np.int8)) == pytest.approx(10 * np.log10(2 * 8100 / 200))


def test_cosine_on_known_values_and_edges():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(2**-0.5)
    assert cosine_similarity(np.zeros(3), np.ones(3)) == 0.0  # no direction: 0, not NaN
    a = np.array([100, 100], np.int8)
    assert cosine_similarity(a, a) == pytest.approx(1.0)  # int8 products summed in float64


def test_upsample_class_map_is_torchs_bilinear_without_corner_alignment():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 3, 5)).astype(np.float16)  # any float input is scored in fp32
    want = F.interpolate(torch.from_numpy(logits.astype(np.float32)), size=(7, 11), mode="bilinear",
                         align_corners=False).argmax(1).numpy()
    np.testing.assert_array_equal(upsample_class_map(logits, (7, 11)), want)
    np.testing.assert_array_equal(upsample_class_map(logits, (3, 5)), logits.astype(np.float32).argmax(1))
    ints = np.rint(logits.astype(np.float32) * 100).astype(np.int32)  # integer logits are scored too
    np.testing.assert_array_equal(upsample_class_map(ints, (7, 11)), upsample_class_map(ints / 100, (7, 11)))
    # a ramp crossing a constant: pixel centres (align_corners=False) put the crossing at column 6 of 16,
    # corner alignment would put it at 5
    ramp = np.zeros((1, 2, 1, 2), np.float32)
    ramp[0, 0, 0] = [0.0, 1.0]
    ramp[0, 1] = 0.3
    assert upsample_class_map(ramp, (1, 16))[0, 0].tolist() == [1] * 6 + [0] * 10
    # a (K, h, w)-shaped size that matches only with the class axis is still resized
    square = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    assert upsample_class_map(square, (8, 8)).shape == (1, 8, 8)
