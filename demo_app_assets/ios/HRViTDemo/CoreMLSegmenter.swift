import CoreML
import Vision

/// Core ML through Vision: the model's ImageType input takes the camera frame as it is (mean/std are
/// folded into the model); Vision scales it to the input size (scaleFill) and returns the logits.
final class CoreMLSegmenter {
    private let request: VNCoreMLRequest

    init(bundle: SegmentationBundle) throws {
        let config = MLModelConfiguration()
        config.computeUnits = .all  // Neural Engine where the ops allow, GPU/CPU otherwise
        // Xcode compiles model.mlpackage into model.mlmodelc; a downloaded bundle is compiled at run time.
        let compiled = Bundle.main.url(forResource: "model", withExtension: "mlmodelc")
            ?? (try MLModel.compileModel(at: bundle.url(ModelConfig.coremlModelFile)))
        let model = try VNCoreMLModel(for: MLModel(contentsOf: compiled, configuration: config))
        request = VNCoreMLRequest(model: model)
        request.imageCropAndScaleOption = .scaleFill
    }

    /// Class map (H/4 x W/4, row-major) for one camera frame.
    func segment(_ pixelBuffer: CVPixelBuffer, orientation: CGImagePropertyOrientation) throws -> [UInt8] {
        try VNImageRequestHandler(cvPixelBuffer: pixelBuffer, orientation: orientation).perform([request])
        guard let observations = request.results as? [VNCoreMLFeatureValueObservation],
              let logits = observations.first(where: { $0.featureName == ModelConfig.outputName })?
                .featureValue.multiArrayValue
        else { throw SegmentationBundle.BundleError.mismatch("no \(ModelConfig.outputName) output") }
        return argmax(logits)
    }

    private func argmax(_ logits: MLMultiArray) -> [UInt8] {
        let k = ModelConfig.outputShape[1], h = ModelConfig.outputShape[2], w = ModelConfig.outputShape[3]
        let strides = logits.strides.map { $0.intValue }
        var classes = [UInt8](repeating: 0, count: h * w)
        var best = [Float](repeating: -.infinity, count: h * w)
        for c in 0..<k {
            for y in 0..<h {
                for x in 0..<w {
                    // subscripting handles fp16 and fp32 outputs alike
                    let v = logits[c * strides[1] + y * strides[2] + x * strides[3]].floatValue
                    if v > best[y * w + x] { best[y * w + x] = v; classes[y * w + x] = UInt8(c) }
                }
            }
        }
        return classes
    }
}
