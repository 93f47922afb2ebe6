import AVFoundation
import UIKit

/// Camera preview with the segmentation overlay. Uses Core ML when the bundle has model.mlpackage,
/// otherwise ExecuTorch.
final class CameraViewController: UIViewController, AVCaptureVideoDataOutputSampleBufferDelegate {
    private let session = AVCaptureSession()
    private let overlayView = UIImageView()
    private var bundle: SegmentationBundle!
    private var coreml: CoreMLSegmenter?
    private var executorch: ExecuTorchSegmenter?
    private let queue = DispatchQueue(label: "segmentation")

    override func viewDidLoad() {
        super.viewDidLoad()
        do {
            bundle = try SegmentationBundle()
            if FileManager.default.fileExists(atPath: bundle.url(ModelConfig.coremlModelFile).path)
                || Bundle.main.url(forResource: "model", withExtension: "mlmodelc") != nil {
                coreml = try CoreMLSegmenter(bundle: bundle)
            } else {
                executorch = try ExecuTorchSegmenter(bundle: bundle)
            }
        } catch {
            fatalError("bundle does not match ModelConfig: \(error)")
        }
        let preview = AVCaptureVideoPreviewLayer(session: session)
        preview.frame = view.bounds
        preview.videoGravity = .resize  // same stretch as the model input, so the overlay lines up
        view.layer.addSublayer(preview)
        overlayView.frame = view.bounds
        overlayView.layer.magnificationFilter = .nearest
        view.addSubview(overlayView)

        session.sessionPreset = .vga640x480
        guard let camera = AVCaptureDevice.default(for: .video),
              let input = try? AVCaptureDeviceInput(device: camera) else { return }
        session.addInput(input)
        let output = AVCaptureVideoDataOutput()
        output.alwaysDiscardsLateVideoFrames = true
        output.setSampleBufferDelegate(self, queue: queue)
        session.addOutput(output)
        queue.async { self.session.startRunning() }
    }

    func captureOutput(_ output: AVCaptureOutput, didOutput sampleBuffer: CMSampleBuffer,
                       from connection: AVCaptureConnection) {
        guard let pixelBuffer = CMSampleBufferGetImageBuffer(sampleBuffer) else { return }
        var classes: [UInt8]?
        if let coreml {
            classes = try? coreml.segment(pixelBuffer, orientation: .right)
        } else if let executorch {
            let ci = CIImage(cvPixelBuffer: pixelBuffer).oriented(.right)
            if let cg = CIContext().createCGImage(ci, from: ci.extent) { classes = try? executorch.segment(cg) }
        }
        guard let classes, let image = Overlay.image(classes: classes, bundle: bundle) else { return }
        DispatchQueue.main.async { self.overlayView.image = image }
    }
}
