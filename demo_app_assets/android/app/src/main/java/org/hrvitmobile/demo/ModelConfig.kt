package org.hrvitmobile.demo

// The bundle contract of the LiteRT path, and the bundle's file names. tests/test_bundle.py parses these
// constants and compares them with the model_info.json a real `hrvit-mobile bundle --app android` writes;
// at run time SegmentationBundle checks them against the bundle in the app's assets, so a mismatch
// fails loudly. The ExecuTorch path keeps no constants here: it reads labels, input size, layout and
// normalization from the .pte's constant methods (ExecuTorchSegmenter).
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
    const val OUTPUT_NAME = "logits"
    const val NUM_CLASSES = 150

    // The .tflite is a MediaPipe Image Segmenter model: it takes the RGB frame as float32 0..255 NHWC
    // (mean/std are inside the model) and returns logits NHWC
    val TFLITE_INPUT_SHAPE = longArrayOf(1, 512, 512, 3) // N, H, W, C
    val TFLITE_OUTPUT_SHAPE = longArrayOf(1, 128, 128, 150) // N, H/4, W/4, classes
}
