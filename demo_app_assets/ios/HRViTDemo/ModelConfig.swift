// The one place the iOS demo keeps the bundle contract. tests/test_bundle.py parses these constants and
// compares them with the model_info.json a real `hrvit-mobile bundle --app ios` writes; at run time
// BundleLoader checks them against the bundle the app ships, so a mismatched bundle fails loudly.
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

    // (pixel / 255 - mean) / std per RGB channel. ExecuTorch needs it in the app; the Core ML model has it
    // folded into its image input, so Vision feeds it raw pixels.
    static let mean: [Float] = [0.485, 0.456, 0.406]
    static let std: [Float] = [0.229, 0.224, 0.225]
}
