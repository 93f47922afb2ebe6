import UIKit

/// Colours a class map with the bundle's palette; shown semi-transparent over the camera preview.
enum Overlay {
    static func image(classes: [UInt8], width w: Int, height h: Int, bundle: SegmentationBundle,
                      alpha: UInt8 = 128) -> UIImage? {
        var rgba = [UInt8](repeating: 0, count: w * h * 4)
        for (i, c) in classes.enumerated() {
            let (r, g, b) = bundle.palette[Int(c)]
            rgba[i * 4] = r; rgba[i * 4 + 1] = g; rgba[i * 4 + 2] = b; rgba[i * 4 + 3] = alpha
        }
        guard let provider = CGDataProvider(data: Data(rgba) as CFData),
              let cg = CGImage(width: w, height: h, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: w * 4,
                               space: CGColorSpaceCreateDeviceRGB(),
                               bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.last.rawValue),
                               provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
        else { return nil }
        return UIImage(cgImage: cg)  // the image view scales it to the preview (nearest: .magnificationFilter)
    }
}
