package org.hrvitmobile.demo

// The one place the Android demo keeps the bundle contract. tests/test_bundle.py parses these constants
// and compares them with the model_info.json a real `hrvit-mobile bundle --app android` writes; at run
// time BundleLoader checks them against the bundle in the app's assets, so a mismatch fails loudly.
// Defaults match the default bundle: hrvit_b1, 512x512, ADE20K-150.
object ModelConfig {
    const val MODEL_INFO_FILE = "model_info.json"
    const val LABELS_FILE = "labels.txt"
    const val PALETTE_FILE = "palette.txt"

    const val TFLITE_MODEL_FILE = "model.tflite"
    const val TFLITE_SIGNATURE = "serving_default"
    const val EXECUTORCH_MODEL_FILE = "model.pte"
    const val EXECUTORCH_METHOD = "forward"

    const val INPUT_NAME = "image"
    val INPUT_SHAPE = longArrayOf(1, 3, 512, 512) // N, C, H, W
    const val OUTPUT_NAME = "logits"
    val OUTPUT_SHAPE = longArrayOf(1, 150, 128, 128) // N, classes, H/4, W/4
    const val NUM_CLASSES = 150

    // (pixel / 255 - mean) / std per RGB channel, applied by the app for ExecuTorch
    val MEAN = floatArrayOf(0.485f, 0.456f, 0.406f)
    val STD = floatArrayOf(0.229f, 0.224f, 0.225f)

    // The .tflite is a MediaPipe Image Segmenter model: it takes the RGB frame as float32 0..255 NHWC
    // (mean/std are inside the model) and returns logits NHWC
    val TFLITE_INPUT_SHAPE = longArrayOf(1, 512, 512, 3) // N, H, W, C
    val TFLITE_OUTPUT_SHAPE = longArrayOf(1, 128, 128, 150) // N, H/4, W/4, classes
}
