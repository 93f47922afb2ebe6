package org.hrvitmobile.demo

import android.graphics.Bitmap

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
