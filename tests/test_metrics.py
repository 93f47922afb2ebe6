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


def test_cosine_of_float32_outputs_is_computed_in_float64():
    """Artifacts return float32: summed in float32, the norms of 100k values drift by about 3e-8, enough
    to move a cosine across a 0.99999 threshold's last digit."""
    a = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    assert abs(cosine_similarity(a, a) - 1.0) < 1e-12
    assert abs(cosine_similarity(a, a.astype(np.float64)) - 1.0) < 1e-12
    assert abs(cosine_similarity(a.astype(np.float64), a) - 1.0) < 1e-12


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


# --- the parity comparison every backend's validate reports (hrvit_mobile.exporters.parity) ----------

from hrvit_mobile.exporters.parity import (  # noqa: E402
    DEFAULT_THRESHOLDS,
    ParityThresholds,
    compare,
    default_thresholds,
    first_output,
    reference_outputs,
    synthetic_images,
    to_tensors,
)


def _logits(seed: int, shape=(1, 3, 4, 5)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _reference_figures(outputs, references):
    """max |d|, mean |d|, worst cosine and argmax agreement, computed here one sample at a time."""
    pairs = [(np.float64(o).reshape(r.shape), np.float64(r)) for o, r in zip(outputs, references)]
    diffs = [np.abs(o - r) for o, r in pairs]
    cosines = [float(np.sum(o * r) / np.sqrt(np.sum(o**2) * np.sum(r**2))) for o, r in pairs]
    agree = sum(int((o.argmax(1) == r.argmax(1)).sum()) for o, r in pairs)
    pixels = sum(r.shape[0] * r.shape[2] * r.shape[3] for _, r in pairs)
    mean = sum(float(d.sum()) for d in diffs) / sum(d.size for d in diffs)
    return max(float(d.max()) for d in diffs), mean, min(cosines), agree / pixels


def test_compare_figures_over_samples_of_different_sizes():
    refs = [_logits(0), _logits(1, (2, 3, 2, 3))]
    outs = [refs[0] + 0.25 * _logits(2), (refs[1] + 0.5 * _logits(3, (2, 3, 2, 3))).ravel()]  # flat: reshaped
    res = compare(outs, refs, ParityThresholds(), "here")
    max_abs, mean_abs, cosine, agreement = _reference_figures(outs, refs)
    assert (res.runtime, res.ran, res.passed, res.samples, res.reason) == ("here", True, True, 2, "")
    assert res.max_abs_err == pytest.approx(max_abs, rel=1e-12)
    assert res.mean_abs_err == pytest.approx(mean_abs, rel=1e-12)
    assert res.cosine == pytest.approx(cosine, rel=1e-12)
    assert res.argmax_agreement == pytest.approx(agreement, rel=1e-12) and 0 < agreement < 1
    assert res.thresholds == ParityThresholds()


def test_compare_of_identical_outputs():
    refs = [_logits(4), _logits(5)]
    res = compare([r.copy() for r in refs], refs, ParityThresholds(0.0, 1.0 - 1e-12, 1.0), "same")
    assert res.passed and res.max_abs_err == 0.0 and res.mean_abs_err == 0.0
    assert res.cosine == pytest.approx(1.0, abs=1e-12) and res.argmax_agreement == 1.0


def test_compare_cosine_never_exceeds_one():
    """|x|^2 / (|x| |x|) rounds to 1.0000000000000002 for this x: the figure reported is 1.0."""
    x = np.float64(_logits(1)).ravel()
    assert float(np.dot(x, x) / (np.linalg.norm(x) * np.linalg.norm(x))) > 1
    x = _logits(1)
    assert compare([x], [x], ParityThresholds(), "x").cosine == 1.0


def test_default_thresholds():
    assert default_thresholds(32, "float") == DEFAULT_THRESHOLDS[(32, "float")]
    assert default_thresholds(8, "int8") == ParityThresholds(min_cosine=0.98, min_argmax_agreement=0.90)
    assert default_thresholds(3, "float") == ParityThresholds(min_cosine=0.95)  # any other pair


def test_compare_worst_sample_decides_the_cosine():
    ref = _logits(6)
    res = compare([ref, -ref], [ref, ref], ParityThresholds(), "x")
    assert res.cosine == pytest.approx(-1.0) and res.argmax_agreement == 0.5


def test_compare_zero_output_has_cosine_zero():
    ref = _logits(7)
    res = compare([np.zeros_like(ref)], [ref], ParityThresholds(min_cosine=-0.5), "x")
    assert res.cosine == 0.0 and res.passed
    assert compare([np.zeros_like(ref)], [ref], ParityThresholds(min_cosine=1e-9), "x").passed is False


def test_compare_thresholds_are_inclusive_and_each_names_its_failure():
    ref = np.zeros((1, 2, 1, 2), np.float32)
    ref[0, 0] = 1.0  # class 0 everywhere
    out = ref.copy()
    out[0, 1, 0, 1] = 2.0  # one of two pixels flips to class 1; |d| = 2
    m = _reference_figures([out], [ref])
    exact = ParityThresholds(max_abs_err=m[0], min_cosine=m[2], min_argmax_agreement=m[3])
    assert compare([out], [ref], exact, "x").passed is True  # at each limit: passes
    res = compare([out], [ref], ParityThresholds(1.999, m[2] + 1e-6, 0.51), "x")
    assert res.passed is False
    assert res.reason == (f"max_abs_err 2 > 1.999; cosine {m[2]:.6f} < {m[2] + 1e-6:g}; "
                          "argmax agreement 0.5000 < 0.51")
    assert compare([out], [ref], ParityThresholds(max_abs_err=1.5), "x").reason == "max_abs_err 2 > 1.5"
    assert compare([out], [ref], ParityThresholds(min_argmax_agreement=0.6), "x").reason == (
        "argmax agreement 0.5000 < 0.6")
    assert compare([out], [ref], ParityThresholds(min_cosine=0.9), "x").reason == f"cosine {m[2]:.6f} < 0.9"


def test_compare_refuses_non_finite_outputs():
    ref = _logits(8)
    for bad in (np.nan, np.inf, -np.inf):
        out = ref.copy()
        out[0, 0, 0, 0] = bad
        res = compare([ref, out], [ref, ref], ParityThresholds(), "x")
        assert res.passed is False
        assert res.reason.startswith("non-finite values (NaN/inf) in the artifact's output")


def test_compare_needs_one_output_per_reference():
    with pytest.raises(ValueError, match="got 1 outputs for 2 references"):
        compare([_logits(0)], [_logits(0), _logits(1)], ParityThresholds(), "x")
    with pytest.raises(ValueError, match="got 0 outputs for 0 references"):
        compare([], [], ParityThresholds(), "x")


def test_synthetic_images_are_the_same_bytes_for_a_seed():
    """Parity and calibration images recorded in sidecars as 'synthetic' must stay what they were."""
    import hashlib

    a = synthetic_images(2, (32, 48), seed=3)
    assert a.shape == (2, 32, 48, 3) and a.dtype == np.uint8
    assert hashlib.sha256(a.tobytes()).hexdigest() == (
        "d21a14c6b99c9a5242bb021fc0f7e33046ba7b6443e2886ee607ee5257d488fa")
    assert not np.array_equal(a, synthetic_images(2, (32, 48), seed=4))
    np.testing.assert_array_equal(synthetic_images(1, (32, 32)), synthetic_images(1, (32, 32), seed=0))
    assert not np.array_equal(a[0], a[1])


def test_reference_outputs_and_first_output():
    import torch

    class Twice(torch.nn.Module):
        def forward(self, x):
            return {"logits": 2 * x, "other": x} if self.training is False else None

    batch = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    tensors = to_tensors(batch)
    assert [t.shape for t in tensors] == [(1, 3, 2, 2)] * 2
    np.testing.assert_array_equal(tensors[1].numpy(), batch[1:2])
    model = Twice().train()
    outs = reference_outputs(model, tensors)  # puts the model in eval mode
    np.testing.assert_array_equal(np.concatenate(outs), 2 * batch)
    t = torch.ones(1)
    assert first_output(t) is t and first_output((t, 2 * t)) is t and first_output([t]) is t
