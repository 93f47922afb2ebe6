import Foundation

/// Reads the bundle folder (added to the app target as a folder reference named "bundle"). Refuses a
/// bundle whose Core ML model disagrees with ModelConfig, or whose labels disagree with its class count;
/// the ExecuTorch path checks the .pte's own contract (ExecuTorchSegmenter). Integrity (sha256 of every
/// file) is checked on the build machine with `hrvit-mobile bundle --verify`.
struct SegmentationBundle {
    let root: URL
    let manifest: Manifest
    let labels: [String]
    let palette: [(UInt8, UInt8, UInt8)]

    struct Manifest: Decodable {
        struct IO: Decodable { let name: String; let shape: [Int] }
        struct Input: Decodable {
            let name: String; let shape: [Int]; let normalization: Normalization
        }
        struct Normalization: Decodable { let mean: [Float]; let std: [Float] }
        struct Labels: Decodable { let txt: String; let palette: String }
        struct Model: Decodable { let runtime: String; let file: String }
        struct SelfTest: Decodable {
            let image: String
            let expected_classes: String
            let shape: [Int]
            let dtype: String
            let logits_sha256: String
            let min_agreement: [String: Double]
        }
        let num_classes: Int
        let input: Input
        let output: IO
        let labels: Labels
        let models: [Model]
        let self_test: SelfTest
    }

    enum BundleError: Error { case mismatch(String) }

    init(root: URL = Bundle.main.url(forResource: "bundle", withExtension: nil)!) throws {
        self.root = root
        let data = try Data(contentsOf: root.appendingPathComponent(ModelConfig.modelInfoFile))
        let m = try JSONDecoder().decode(Manifest.self, from: data)
        func check(_ ok: Bool, _ what: String) throws { if !ok { throw BundleError.mismatch(what) } }
        try check(m.labels.txt == ModelConfig.labelsFile && m.labels.palette == ModelConfig.paletteFile, "label files")
        if m.models.contains(where: { $0.runtime == "coreml" }) {  // the Core ML contract lives in ModelConfig
            try check(m.input.name == ModelConfig.inputName, "input name")
            try check(m.input.shape == ModelConfig.inputShape, "input shape")
            try check(m.output.name == ModelConfig.outputName, "output name")
            try check(m.output.shape == ModelConfig.outputShape, "output shape")
            try check(m.num_classes == ModelConfig.numClasses, "class count")
        }

        func lines(_ name: String) throws -> [String] {
            try String(contentsOf: root.appendingPathComponent(name), encoding: .utf8)
                .split(separator: "\n").map(String.init)
        }
        manifest = m
        labels = try lines(ModelConfig.labelsFile)
        palette = try lines(ModelConfig.paletteFile).map { line in
            let v = line.split(separator: " ").compactMap { UInt8($0) }
            return (v[0], v[1], v[2])
        }
        try check(labels.count == m.num_classes && palette.count == m.num_classes, "class count")
    }

    func url(_ file: String) -> URL { root.appendingPathComponent(file) }
}
