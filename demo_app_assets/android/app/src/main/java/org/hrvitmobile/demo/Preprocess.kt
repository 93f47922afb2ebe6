package org.hrvitmobile.demo

import android.graphics.Bitmap

/** One runtime behind the demo: a frame in, its logits out (read in place from the runtime's buffer). */
interface Segmenter {
    val inputWidth: Int
    val inputHeight: Int
    fun logits(frame: Bitmap): Logits
}

/** The frame stretched to the input size, as the bundle's contract says, as ARGB pixels into [out]. */
fun scaledPixels(frame: Bitmap, width: Int, height: Int, out: IntArray) {
    val scaled = if (frame.width == width && frame.height == height) frame
        else Bitmap.createScaledBitmap(frame, width, height, true)
    scaled.getPixels(out, 0, width, 0, 0, width, height)
}

/** Class map ([width] x [height], one byte per pixel) -> ARGB overlay bitmap in the bundle's palette. */
fun overlayBitmap(classes: ByteArray, width: Int, height: Int, palette: IntArray, alpha: Int = 128): Bitmap {
    val colours = IntArray(classes.size) { (palette[classes[it].toInt() and 0xFF] and 0xFFFFFF) or (alpha shl 24) }
    return Bitmap.createBitmap(colours, width, height, Bitmap.Config.ARGB_8888)
}
