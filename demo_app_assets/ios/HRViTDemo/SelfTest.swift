import UIKit

/// The bundle's self-test, as the web page runs it: the golden image (`self_test/input.png`, already at
/// the input size) through the model; its logits resized bilinearly to the image and argmaxed; compared
/// pixel by pixel with the float model's map (`self_test/expected_classes.u8|u16`). It passes at the
/// manifest's `min_agreement` for the model file. Run once at first launch: the result is kept in
/// UserDefaults under the bundle's logits digest and the model file, so a new bundle runs it again.
enum SelfTest {
    struct Result {
        let passed: Bool, agreement: Double, bar: Double, modelFile: String
        var description: String {
            String(format: "self-test (%@): %@, %.2f %% of pixels agree with the float model (needs %.0f %%)",
                   modelFile, passed ? "pass" : "FAIL", 100 * agreement, 100 * bar)
        }
    }

    static func runOnce(bundle: SegmentationBundle, segmenter: Segmenter,
                        defaults: UserDefaults = .standard) throws -> Result {
        let entry = bundle.manifest.self_test
        let key = "hrvit.selfTest.\(entry.logits_sha256).\(segmenter.modelFile)"
        let bar = entry.min_agreement[segmenter.modelFile] ?? 1
        if let kept = defaults.dictionary(forKey: key), let passed = kept["passed"] as? Bool,
           let agreement = kept["agreement"] as? Double {
            return Result(passed: passed, agreement: agreement, bar: bar, modelFile: segmenter.modelFile)
        }
        let result = try run(bundle: bundle, segmenter: segmenter)
        let stored: [String: Any] = ["passed": result.passed, "agreement": result.agreement]
        defaults.set(stored, forKey: key)
        return result
    }

    static func run(bundle: SegmentationBundle, segmenter: Segmenter) throws -> Result {
        let entry = bundle.manifest.self_test
        let (h, w) = (entry.shape[0], entry.shape[1])
        guard let bar = entry.min_agreement[segmenter.modelFile] else {
            throw SegmentationBundle.BundleError.mismatch("no self-test bar for \(segmenter.modelFile)")
        }
        let expected = try expectedClasses(Data(contentsOf: bundle.url(entry.expected_classes)), dtype: entry.dtype,
                                           count: h * w)
        guard let golden = UIImage(contentsOfFile: bundle.url(entry.image).path)?.cgImage else {
            throw SegmentationBundle.BundleError.mismatch("\(entry.image) is not an image")
        }
        let classes = try segmenter.withLogits(golden) { logits, layout in
            upsampledClassMap(logits, layout, outHeight: h, outWidth: w)
        }
        let a = agreement(classes, expected)
        return Result(passed: a >= bar, agreement: a, bar: bar, modelFile: segmenter.modelFile)
    }
}
