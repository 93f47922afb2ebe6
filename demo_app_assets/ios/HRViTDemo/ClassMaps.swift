import Accelerate
import Foundation

/// Where logit (class c, row y, column x) sits in a float buffer: c * classStride + y * rowStride +
/// x * columnStride. Covers ExecuTorch's dense NCHW tensor and Core ML arrays with padded rows.
struct LogitsLayout {
    let classes: Int, height: Int, width: Int
    let classStride: Int, rowStride: Int, columnStride: Int

    /// Dense class-major logits (NCHW without the batch).
    init(classes: Int, height: Int, width: Int) {
        self.init(classes: classes, height: height, width: width, classStride: height * width, rowStride: width,
                  columnStride: 1)
    }

    init(classes: Int, height: Int, width: Int, classStride: Int, rowStride: Int, columnStride: Int) {
        self.classes = classes; self.height = height; self.width = width
        self.classStride = classStride; self.rowStride = rowStride; self.columnStride = columnStride
    }
}

/// The per-frame class map (height * width, row-major, one byte per pixel), buffers reused across
/// frames. Reads the runtime's float buffer through a raw pointer: no NSNumber, no per-element boxing.
final class ClassMapper {
    let layout: LogitsLayout
    private(set) var classMap: [UInt8]
    private var best: [Float]

    init(layout: LogitsLayout) {
        precondition(layout.classes <= 256, "a byte class map holds at most 256 classes")
        self.layout = layout
        classMap = [UInt8](repeating: 0, count: layout.height * layout.width)
        best = [Float](repeating: 0, count: layout.height * layout.width)
    }

    /// argmax over the class axis (first maximum wins, as numpy and torch do). Class-outer, so each pass
    /// reads one class plane front to back instead of jumping a plane per class.
    func map(_ logits: UnsafeBufferPointer<Float>) -> [UInt8] {
        let l = layout
        classMap.withUnsafeMutableBufferPointer { out in
            best.withUnsafeMutableBufferPointer { top in
                for c in 0..<l.classes {
                    let label = UInt8(c)
                    for y in 0..<l.height {
                        let row = c * l.classStride + y * l.rowStride
                        for x in 0..<l.width {
                            let v = logits[row + x * l.columnStride], p = y * l.width + x
                            if c == 0 || v > top[p] { top[p] = v; out[p] = label }
                        }
                    }
                }
            }
        }
        return classMap
    }
}

/// The class map at outHeight x outWidth from low-resolution logits: bilinear resize of the logits
/// (align_corners=False, as torch's F.interpolate) then argmax, pixel by pixel, so the full-size
/// logits never exist. This is how the bundle's expected self-test map was made.
func upsampledClassMap(_ logits: UnsafeBufferPointer<Float>, _ l: LogitsLayout, outHeight: Int,
                       outWidth: Int) -> [Int32] {
    func source(_ i: Int, scale: Float, size: Int) -> (Int, Int, Float) {
        let s = max(scale * (Float(i) + 0.5) - 0.5, 0)
        let i0 = Int(s)
        return (i0, min(i0 + 1, size - 1), s - Float(i0))
    }
    let columns = (0..<outWidth).map { source($0, scale: Float(l.width) / Float(outWidth), size: l.width) }
    var out = [Int32](repeating: 0, count: outHeight * outWidth)
    for y in 0..<outHeight {
        let (y0, y1, ly) = source(y, scale: Float(l.height) / Float(outHeight), size: l.height)
        for x in 0..<outWidth {
            let (x0, x1, lx) = columns[x]
            let o00 = y0 * l.rowStride + x0 * l.columnStride, o01 = y0 * l.rowStride + x1 * l.columnStride
            let o10 = y1 * l.rowStride + x0 * l.columnStride, o11 = y1 * l.rowStride + x1 * l.columnStride
            var top: Int32 = 0, topValue = -Float.infinity
            for c in 0..<l.classes {
                let b = c * l.classStride
                let v = (1 - ly) * ((1 - lx) * logits[b + o00] + lx * logits[b + o01])
                    + ly * ((1 - lx) * logits[b + o10] + lx * logits[b + o11])
                if v > topValue { topValue = v; top = Int32(c) }
            }
            out[y * outWidth + x] = top
        }
    }
    return out
}

/// RGBA8 pixels (width * height * 4) -> float32 NCHW `(pixel * pixelScale - mean) / std` into `out`,
/// with Accelerate: vDSP_vfltu8 widens one channel (stride 4) to floats, vDSP_vsmsa applies
/// `* (pixelScale / std) + (-mean / std)` to the whole plane.
func normalizeRGBA(_ rgba: UnsafeBufferPointer<UInt8>, into out: UnsafeMutableBufferPointer<Float>,
                   mean: [Float], std: [Float], pixelScale: Float) {
    let plane = out.count / 3
    precondition(rgba.count == 4 * plane, "RGBA buffer and input size differ")
    for c in 0..<3 {
        let dst = out.baseAddress! + c * plane
        vDSP_vfltu8(rgba.baseAddress! + c, 4, dst, 1, vDSP_Length(plane))
        var scale = pixelScale / std[c], offset = -mean[c] / std[c]
        vDSP_vsmsa(dst, 1, &scale, &offset, dst, 1, vDSP_Length(plane))
    }
}

/// The bundle's expected self-test map (`self_test/expected_classes.u8` or `.u16`, little-endian).
func expectedClasses(_ data: Data, dtype: String, count: Int) throws -> [Int32] {
    let bytes = [UInt8](data)
    switch dtype {
    case "uint8" where bytes.count == count:
        return bytes.map { Int32($0) }
    case "uint16le" where bytes.count == 2 * count:
        return (0..<count).map { Int32(bytes[2 * $0]) | Int32(bytes[2 * $0 + 1]) << 8 }
    default:
        throw SegmentationBundle.BundleError.mismatch("expected classes: \(bytes.count) bytes of \(dtype) for \(count) pixels")
    }
}

/// Fraction of pixels whose class equals the expected one (0 when the sizes differ).
func agreement(_ classMap: [Int32], _ expected: [Int32]) -> Double {
    guard classMap.count == expected.count, !expected.isEmpty else { return 0 }
    var same = 0
    for i in 0..<expected.count where classMap[i] == expected[i] { same += 1 }
    return Double(same) / Double(expected.count)
}
