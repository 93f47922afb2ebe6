import AVFoundation
import UIKit

/// Camera preview with the segmentation overlay. Uses Core ML when the bundle has model.mlpackage,
/// otherwise ExecuTorch. At first launch the bundle's self-test runs before the first frame; its result
/// (pass/fail, pixel agreement) stays on screen.
final class CameraViewController: UIViewController, AVCaptureVideoDataOutputSampleBufferDelegate {
    private let session = AVCaptureSession()
    private let overlayView = UIImageView()
    private let selfTestLabel = UILabel()
    private var bundle: SegmentationBundle!
    private var coreml: CoreMLSegmenter?
    private var segmenter: Segmenter!
    private var mapper: ClassMapper?
    private let ciContext = CIContext()
    private let queue = DispatchQueue(label: "segmentation")

    override func viewDidLoad() {
        super.viewDidLoad()
        do {
            bundle = try SegmentationBundle()
            if FileManager.default.fileExists(atPath: bundle.url(ModelConfig.coremlModelFile).path)
                || Bundle.main.url(forResource: "model", withExtension: "mlmodelc") != nil {
                coreml = try CoreMLSegmenter(bundle: bundle)
                segmenter = coreml
            } else {
                segmenter = try ExecuTorchSegmenter(bundle: bundle)
            }
        } catch {
            fatalError("the bundle does not match this app: \(error)")
        }
        let preview = AVCaptureVideoPreviewLayer(session: session)
        preview.frame = view.bounds
        preview.videoGravity = .resize  // same stretch as the model input, so the overlay lines up
        view.layer.addSublayer(preview)
        overlayView.frame = view.bounds
        overlayView.layer.magnificationFilter = .nearest
        view.addSubview(overlayView)
        selfTestLabel.frame = CGRect(x: 8, y: 48, width: view.bounds.width - 16, height: 44)
        selfTestLabel.numberOfLines = 2
        selfTestLabel.textColor = .white
        selfTestLabel.backgroundColor = UIColor.black.withAlphaComponent(0.6)
        selfTestLabel.text = "self-test: running"
        view.addSubview(selfTestLabel)

        session.sessionPreset = .vga640x480
        guard let camera = AVCaptureDevice.default(for: .video),
              let input = try? AVCaptureDeviceInput(device: camera) else { return }
        session.addInput(input)
        let output = AVCaptureVideoDataOutput()
        output.alwaysDiscardsLateVideoFrames = true
        output.setSampleBufferDelegate(self, queue: queue)
        session.addOutput(output)
        queue.async {  // the self-test first, on the queue the frames use
            let text: String
            do {
                text = try SelfTest.runOnce(bundle: self.bundle, segmenter: self.segmenter).description
            } catch {
                text = "self-test (\(self.segmenter.modelFile)): FAIL (\(error))"
            }
            DispatchQueue.main.async { self.selfTestLabel.text = text }
            self.session.startRunning()
        }
    }

    func captureOutput(_ output: AVCaptureOutput, didOutput sampleBuffer: CMSampleBuffer,
                       from connection: AVCaptureConnection) {
        guard let pixelBuffer = CMSampleBufferGetImageBuffer(sampleBuffer) else { return }
        let classMap: (UnsafeBufferPointer<Float>, LogitsLayout) -> ClassMapper = { logits, layout in
            let m = self.mapper ?? ClassMapper(layout: layout)
            self.mapper = m
            _ = m.map(logits)
            return m
        }
        var mapped: ClassMapper?
        if let coreml {
            mapped = try? coreml.withLogits(pixelBuffer, orientation: .right, classMap)
        } else {
            let ci = CIImage(cvPixelBuffer: pixelBuffer).oriented(.right)
            if let cg = ciContext.createCGImage(ci, from: ci.extent) { mapped = try? segmenter.withLogits(cg, classMap) }
        }
        guard let m = mapped, let image = Overlay.image(classes: m.classMap, width: m.layout.width,
                                                        height: m.layout.height, bundle: bundle) else { return }
        DispatchQueue.main.async { self.overlayView.image = image }
    }
}
