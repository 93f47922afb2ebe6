// The bundle contract of the Core ML path, and the bundle's file names. tests/test_bundle.py parses these
// constants and compares them with the model_info.json a real `hrvit-mobile bundle --app ios` writes; at
// run time BundleLoader checks them against a bundle with a Core ML model, so a mismatch fails loudly.
// The ExecuTorch path keeps no constants here: it reads labels, input size, layout and normalization from
// the .pte's constant methods (ExecuTorchSegmenter). The Core ML model has mean/std folded into its image
// input, so Vision feeds it raw pixels.
// Defaults match the default bundle: hrvit_b1, 512x512, ADE20K-150.

enum ModelConfig {
    static let modelInfoFile = "model_info.json"
    static let labelsFile = "labels.txt"
    static let paletteFile = "palette.txt"

    static let coremlModelFile = "model.mlpackage"  // Xcode compiles it into the app as model.mlmodelc
    static let coremlCompiledName = "model.mlmodelc"
    static let executorchModelFile = "model.pte"
    static let executorchMethod = "forward"

    static let inputName = "image"
    static let inputShape: [Int] = [1, 3, 512, 512]  // N, C, H, W
    static let outputName = "logits"
    static let outputShape: [Int] = [1, 150, 128, 128]  // N, classes, H/4, W/4
    static let numClasses = 150
}
