import ExecuTorch
import UIKit

/// A runtime behind the demo: an image in (any size; stretched to the model input), its float logits
/// handed to `body` in place, laid out as `LogitsLayout` says.
protocol Segmenter: AnyObject {
    var modelFile: String { get }
    func withLogits<R>(_ image: CGImage, _ body: (UnsafeBufferPointer<Float>, LogitsLayout) throws -> R) throws -> R
}

/// What the .pte says about its input, read from its constant methods (labels, input_size, input_layout,
/// mean, std, pixel_scale, output_stride), so that no model constant lives in this app.
struct ExecuTorchContract {
    let labels: [String]
    let height: Int, width: Int
    let layout: String
    let mean: [Float], std: [Float]
    let pixelScale: Float
    let outputStride: Int

    init(_ module: Module) throws {
        labels = try module.execute("labels")
        let size: [Int] = try module.execute("input_size")
        let layouts: [String] = try module.execute("input_layout")
        let mean: [Double] = try module.execute("mean")
        let std: [Double] = try module.execute("std")
        let scale: [Double] = try module.execute("pixel_scale")
        let stride: [Int] = try module.execute("output_stride")
        guard size.count == 2, layouts == ["NCHW"], mean.count == 3, std.count == 3, scale.count == 1,
              stride.count == 1
        else { throw SegmentationBundle.BundleError.mismatch("the .pte's constant methods are not an NCHW image contract") }
        height = size[0]
        width = size[1]
        layout = layouts[0]
        self.mean = mean.map { Float($0) }
        self.std = std.map { Float($0) }
        pixelScale = Float(scale[0])
        outputStride = stride[0]
    }
}

/// ExecuTorch (XNNPACK) through its Swift API. The app resizes and normalizes the frame itself, with the
/// contract the .pte carries; at load the contract is checked against the bundle's labels and manifest.
final class ExecuTorchSegmenter: Segmenter {
    let modelFile = ModelConfig.executorchModelFile
    let contract: ExecuTorchContract
    private let module: Module
    private var rgba: [UInt8]
    private let inputTensor: Tensor<Float>  // its own memory, refilled in place every frame

    init(bundle: SegmentationBundle) throws {
        let module = Module(filePath: bundle.url(ModelConfig.executorchModelFile).path)
        try module.load(ModelConfig.executorchMethod)
        let contract = try ExecuTorchContract(module)
        let (h, w) = (contract.height, contract.width)
        func check(_ ok: Bool, _ what: String) throws {
            if !ok { throw SegmentationBundle.BundleError.mismatch("the .pte's \(what) differ from the bundle's") }
        }
        // placeholder names (class_<i>) carry none: then labels.txt names the classes
        let placeholders = contract.labels == contract.labels.indices.map { "class_\($0)" }
        try check(contract.labels.count == bundle.labels.count && (placeholders || contract.labels == bundle.labels),
                  "labels")
        try check(bundle.manifest.input.shape == [1, 3, h, w], "input size")
        try check(bundle.manifest.input.normalization.mean == contract.mean
                  && bundle.manifest.input.normalization.std == contract.std, "mean/std")
        self.module = module
        self.contract = contract
        rgba = [UInt8](repeating: 0, count: w * h * 4)
        inputTensor = Tensor<Float>.empty(shape: [1, 3, h, w])
    }

    func withLogits<R>(_ image: CGImage, _ body: (UnsafeBufferPointer<Float>, LogitsLayout) throws -> R) throws -> R {
        let (h, w) = (contract.height, contract.width)
        rgba.withUnsafeMutableBytes { pixels in
            let context = CGContext(data: pixels.baseAddress, width: w, height: h, bitsPerComponent: 8, bytesPerRow: w * 4,
                                    space: CGColorSpaceCreateDeviceRGB(),
                                    bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)!
            context.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))  // scaleFill resize
        }
        rgba.withUnsafeBufferPointer { pixels in
            inputTensor.withUnsafeMutableBytes { out in
                normalizeRGBA(pixels, into: out, mean: contract.mean, std: contract.std, pixelScale: contract.pixelScale)
            }
        }
        let output: Tensor<Float> = try module.forward(inputTensor)
        let shape = output.shape  // N, classes, H / stride, W / stride
        let layout = LogitsLayout(classes: shape[1], height: shape[2], width: shape[3])
        return try output.withUnsafeBytes { try body($0, layout) }  // the output's own memory, not a copy
    }
}
