import Accelerate
import CoreML
import Vision

/// Core ML through Vision: the model's ImageType input takes the frame as it is (mean/std are folded into
/// the model); Vision scales it to the input size (scaleFill) and returns the logits, read in place
/// through a raw pointer (fp16 outputs are widened to fp32 once per frame with vImage, never per element).
final class CoreMLSegmenter: Segmenter {
    let modelFile = ModelConfig.coremlModelFile
    private let request: VNCoreMLRequest
    private var widened: [Float] = []  // fp16 logits as fp32, reused across frames

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

    func withLogits<R>(_ image: CGImage, _ body: (UnsafeBufferPointer<Float>, LogitsLayout) throws -> R) throws -> R {
        try run(VNImageRequestHandler(cgImage: image), body)
    }

    /// A camera frame as it comes, without a CGImage in between.
    func withLogits<R>(_ pixelBuffer: CVPixelBuffer, orientation: CGImagePropertyOrientation,
                       _ body: (UnsafeBufferPointer<Float>, LogitsLayout) throws -> R) throws -> R {
        try run(VNImageRequestHandler(cvPixelBuffer: pixelBuffer, orientation: orientation), body)
    }

    private func run<R>(_ handler: VNImageRequestHandler,
                        _ body: (UnsafeBufferPointer<Float>, LogitsLayout) throws -> R) throws -> R {
        try handler.perform([request])
        guard let observations = request.results as? [VNCoreMLFeatureValueObservation],
              let logits = observations.first(where: { $0.featureName == ModelConfig.outputName })?
                .featureValue.multiArrayValue
        else { throw SegmentationBundle.BundleError.mismatch("no \(ModelConfig.outputName) output") }
        let shape = logits.shape.map { $0.intValue }, strides = logits.strides.map { $0.intValue }
        let layout = LogitsLayout(classes: shape[1], height: shape[2], width: shape[3], classStride: strides[1],
                                  rowStride: strides[2], columnStride: strides[3])
        let count = shape[0] * strides[0]  // elements behind the array, row padding included
        return try logits.withUnsafeBytes { raw -> R in
            switch logits.dataType {
            case .float32:
                return try body(UnsafeBufferPointer(start: raw.baseAddress!.assumingMemoryBound(to: Float.self),
                                                    count: count), layout)
            case .float16:
                if widened.count != count { widened = [Float](repeating: 0, count: count) }
                return try widened.withUnsafeMutableBufferPointer { dst -> R in
                    var src = vImage_Buffer(data: UnsafeMutableRawPointer(mutating: raw.baseAddress!), height: 1,
                                            width: vImagePixelCount(count), rowBytes: 2 * count)
                    var out = vImage_Buffer(data: dst.baseAddress!, height: 1, width: vImagePixelCount(count),
                                            rowBytes: 4 * count)
                    vImageConvert_Planar16FtoPlanarF(&src, &out, vImage_Flags(kvImageNoFlags))
                    return try body(UnsafeBufferPointer(dst), layout)
                }
            default:
                throw SegmentationBundle.BundleError.mismatch("logits of MLMultiArray type \(logits.dataType.rawValue)")
            }
        }
    }
}
