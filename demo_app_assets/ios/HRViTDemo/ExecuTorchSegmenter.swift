import ExecuTorch
import UIKit

/// ExecuTorch (XNNPACK) through its Swift API: the app resizes the frame and normalizes it itself.
final class ExecuTorchSegmenter {
    private let module: Module

    init(bundle: SegmentationBundle) throws {
        module = Module(filePath: bundle.url(ModelConfig.executorchModelFile).path)
        try module.load(ModelConfig.executorchMethod)
    }

    /// Class map (H/4 x W/4, row-major) for one frame already resized to the input size.
    func segment(_ image: CGImage) throws -> [UInt8] {
        let h = ModelConfig.inputShape[2], w = ModelConfig.inputShape[3]
        let input = Tensor<Float>(normalizedCHW(image, width: w, height: h), shape: ModelConfig.inputShape)
        let output: Tensor<Float> = try module.forward(input)
        let logits = output.scalars()
        let k = ModelConfig.outputShape[1], plane = ModelConfig.outputShape[2] * ModelConfig.outputShape[3]
        return (0..<plane).map { p in
            var best = 0
            for c in 1..<k where logits[c * plane + p] > logits[best * plane + p] { best = c }
            return UInt8(best)
        }
    }

    /// RGBA pixels -> float32 NCHW with (pixel / 255 - mean) / std.
    private func normalizedCHW(_ image: CGImage, width: Int, height: Int) -> [Float] {
        var rgba = [UInt8](repeating: 0, count: width * height * 4)
        let context = CGContext(data: &rgba, width: width, height: height, bitsPerComponent: 8,
                                bytesPerRow: width * 4, space: CGColorSpaceCreateDeviceRGB(),
                                bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)!
        context.draw(image, in: CGRect(x: 0, y: 0, width: width, height: height))  // scaleFill resize
        var out = [Float](repeating: 0, count: 3 * width * height)
        for i in 0..<(width * height) {
            for c in 0..<3 {
                out[c * width * height + i] = (Float(rgba[i * 4 + c]) / 255 - ModelConfig.mean[c]) / ModelConfig.std[c]
            }
        }
        return out
    }
}
