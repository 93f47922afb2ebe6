package org.hrvitmobile.demo

import android.graphics.Bitmap
import java.nio.FloatBuffer

/** Resize (stretch) a frame to the input size and normalize into float32 NCHW. */
fun normalizedChw(frame: Bitmap): FloatArray {
    val h = ModelConfig.INPUT_SHAPE[2].toInt()
    val w = ModelConfig.INPUT_SHAPE[3].toInt()
    val scaled = Bitmap.createScaledBitmap(frame, w, h, true)
    val pixels = IntArray(w * h)
    scaled.getPixels(pixels, 0, w, 0, 0, w, h)
    val out = FloatArray(3 * w * h)
    for (i in pixels.indices) {
        val p = pixels[i]
        val rgb = intArrayOf((p shr 16) and 0xFF, (p shr 8) and 0xFF, p and 0xFF)
        for (c in 0 until 3) out[c * w * h + i] = (rgb[c] / 255f - ModelConfig.MEAN[c]) / ModelConfig.STD[c]
    }
    return out
}

/** Resize (stretch) a frame to the input size into float32 RGB 0..255, NHWC (the .tflite's input). */
fun rgbHwc(frame: Bitmap, out: FloatBuffer) {
    val h = ModelConfig.TFLITE_INPUT_SHAPE[1].toInt()
    val w = ModelConfig.TFLITE_INPUT_SHAPE[2].toInt()
    val pixels = IntArray(w * h)
    Bitmap.createScaledBitmap(frame, w, h, true).getPixels(pixels, 0, w, 0, 0, w, h)
    out.rewind()
    for (p in pixels) {
        out.put(((p shr 16) and 0xFF).toFloat()); out.put(((p shr 8) and 0xFF).toFloat()); out.put((p and 0xFF).toFloat())
    }
}

/** argmax over the last (class) axis of NHWC logits -> class map (H/4 * W/4, row-major). */
fun argmaxClassesHwc(logits: FloatBuffer): ByteArray {
    val k = ModelConfig.TFLITE_OUTPUT_SHAPE[3].toInt()
    val plane = (ModelConfig.TFLITE_OUTPUT_SHAPE[1] * ModelConfig.TFLITE_OUTPUT_SHAPE[2]).toInt()
    return ByteArray(plane) { p ->
        val base = p * k
        var best = 0
        for (c in 1 until k) if (logits.get(base + c) > logits.get(base + best)) best = c
        best.toByte()
    }
}

/** argmax over the class axis of NCHW logits -> class map (H/4 * W/4, row-major). */
fun argmaxClasses(logits: FloatArray): ByteArray {
    val k = ModelConfig.OUTPUT_SHAPE[1].toInt()
    val plane = (ModelConfig.OUTPUT_SHAPE[2] * ModelConfig.OUTPUT_SHAPE[3]).toInt()
    return ByteArray(plane) { p ->
        var best = 0
        for (c in 1 until k) if (logits[c * plane + p] > logits[best * plane + p]) best = c
        best.toByte()
    }
}

/** Class map -> ARGB overlay bitmap in the bundle's palette, semi-transparent. */
fun overlayBitmap(classes: ByteArray, palette: IntArray, alpha: Int = 128): Bitmap {
    val h = ModelConfig.OUTPUT_SHAPE[2].toInt()
    val w = ModelConfig.OUTPUT_SHAPE[3].toInt()
    val colours = IntArray(classes.size) { (palette[classes[it].toInt() and 0xFF] and 0xFFFFFF) or (alpha shl 24) }
    return Bitmap.createBitmap(colours, w, h, Bitmap.Config.ARGB_8888)
}
