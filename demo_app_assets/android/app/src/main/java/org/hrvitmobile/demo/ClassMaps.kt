package org.hrvitmobile.demo

import java.nio.FloatBuffer

// Per-pixel maths of the demo: normalization, argmax, the self-test's upsampled class map. Plain
// JVM code (no Android import), so tests/test_app_templates.py compiles this file with kotlinc and
// checks it against the Python implementation. Every loop reads primitive floats from the runtime's
// own buffer: no boxed Float, no copy of the logits.

/**
 * Logits of one frame, read in place: [classes] planes of [height] x [width] (NCHW: ExecuTorch) or
 * [classes] values per pixel (NHWC: the .tflite).
 */
class Logits(
    val data: FloatBuffer, val classes: Int, val height: Int, val width: Int, val channelsLast: Boolean
) {
    init {
        require(data.capacity() == classes * height * width) {
            "logits hold ${data.capacity()} values, expected $classes x $height x $width"
        }
    }

    /** The logit of class [c] at pixel ([y], [x]): an absolute get, a primitive float. */
    fun at(c: Int, y: Int, x: Int): Float =
        data.get(if (channelsLast) (y * width + x) * classes + c else (c * height + y) * width + x)
}

/** The per-frame class map (height * width, row-major, one byte per pixel), buffers reused across frames. */
class ClassMapper(val classes: Int, val height: Int, val width: Int) {
    init {
        require(classes in 1..256) { "a byte class map holds 1..256 classes, the model has $classes" }
    }

    val classMap = ByteArray(height * width)
    private val best = FloatArray(height * width)

    /** argmax over the class axis into [classMap] (first maximum wins, as numpy and torch do). */
    fun map(logits: Logits): ByteArray {
        require(logits.classes == classes && logits.height == height && logits.width == width) {
            "logits are ${logits.classes}x${logits.height}x${logits.width}, expected ${classes}x${height}x$width"
        }
        val data = logits.data
        val plane = height * width
        if (logits.channelsLast) {
            for (p in 0 until plane) {
                val base = p * classes
                var top = 0
                var topValue = data.get(base)
                for (c in 1 until classes) {
                    val v = data.get(base + c)
                    if (v > topValue) { topValue = v; top = c }
                }
                classMap[p] = top.toByte()
            }
        } else {
            // class-outer: each pass reads one plane front to back instead of jumping a plane per class
            for (p in 0 until plane) { best[p] = data.get(p); classMap[p] = 0 }
            for (c in 1 until classes) {
                val base = c * plane
                val label = c.toByte()
                for (p in 0 until plane) {
                    val v = data.get(base + p)
                    if (v > best[p]) { best[p] = v; classMap[p] = label }
                }
            }
        }
        return classMap
    }
}

/**
 * The class map at [outHeight] x [outWidth] from low-resolution logits: bilinear resize of the logits
 * (align_corners=False, as torch's F.interpolate) then argmax, computed pixel by pixel so that the
 * full-size logits never exist. This is how the bundle's expected self-test map was made.
 */
fun upsampledClassMap(logits: Logits, outHeight: Int, outWidth: Int): IntArray {
    val x0 = IntArray(outWidth)
    val x1 = IntArray(outWidth)
    val lx = FloatArray(outWidth)
    val sx = logits.width.toFloat() / outWidth
    for (x in 0 until outWidth) {
        val s = maxOf(sx * (x + 0.5f) - 0.5f, 0f)
        x0[x] = s.toInt()
        x1[x] = minOf(x0[x] + 1, logits.width - 1)
        lx[x] = s - x0[x]
    }
    val sy = logits.height.toFloat() / outHeight
    val out = IntArray(outHeight * outWidth)
    for (y in 0 until outHeight) {
        val s = maxOf(sy * (y + 0.5f) - 0.5f, 0f)
        val y0 = s.toInt()
        val y1 = minOf(y0 + 1, logits.height - 1)
        val ly = s - y0
        for (x in 0 until outWidth) {
            val wx = lx[x]
            var top = 0
            var topValue = Float.NEGATIVE_INFINITY
            for (c in 0 until logits.classes) {
                val v = (1 - ly) * ((1 - wx) * logits.at(c, y0, x0[x]) + wx * logits.at(c, y0, x1[x])) +
                    ly * ((1 - wx) * logits.at(c, y1, x0[x]) + wx * logits.at(c, y1, x1[x]))
                if (v > topValue) { topValue = v; top = c }
            }
            out[y * outWidth + x] = top
        }
    }
    return out
}

/**
 * What an app needs to feed a model: input size, layout and `(pixel * pixelScale - mean) / std` per RGB
 * channel. The ExecuTorch path reads it from the .pte's constant methods (ExecuTorchSegmenter).
 */
class InputContract(
    val labels: List<String>,
    val height: Int,
    val width: Int,
    val layout: String,
    val mean: FloatArray,
    val std: FloatArray,
    val pixelScale: Float,
    val outputStride: Int
) {
    init {
        require(layout == "NCHW") { "input layout $layout: this app feeds NCHW" }
        require(mean.size == 3 && std.size == 3) { "mean/std need 3 values (RGB)" }
        require(height > 0 && width > 0 && outputStride > 0 && height % outputStride == 0 &&
            width % outputStride == 0) { "input ${height}x$width with output stride $outputStride" }
    }

    val outputHeight get() = height / outputStride
    val outputWidth get() = width / outputStride

    /** ARGB pixels (as Bitmap.getPixels gives them, [height] x [width]) -> normalized float32 NCHW in [out]. */
    fun normalizeInto(pixels: IntArray, out: FloatBuffer) {
        val plane = height * width
        require(pixels.size == plane && out.capacity() == 3 * plane) { "pixels/out do not match ${height}x$width" }
        // (pixel * scale - mean) / std == pixel * (scale / std) - mean / std: one multiply-add per value
        val r0 = pixelScale / std[0]; val g0 = pixelScale / std[1]; val b0 = pixelScale / std[2]
        val r1 = -mean[0] / std[0]; val g1 = -mean[1] / std[1]; val b1 = -mean[2] / std[2]
        for (i in 0 until plane) {
            val p = pixels[i]
            out.put(i, ((p shr 16) and 0xFF) * r0 + r1)
            out.put(plane + i, ((p shr 8) and 0xFF) * g0 + g1)
            out.put(2 * plane + i, (p and 0xFF) * b0 + b1)
        }
    }
}

/** ARGB pixels -> float32 RGB 0..255, NHWC, into [out] (the .tflite's input: mean/std are in its graph). */
fun rgbHwcInto(pixels: IntArray, out: FloatBuffer) {
    require(out.capacity() == 3 * pixels.size) { "out holds ${out.capacity()} values, expected ${3 * pixels.size}" }
    for (i in pixels.indices) {
        val p = pixels[i]
        out.put(3 * i, ((p shr 16) and 0xFF).toFloat())
        out.put(3 * i + 1, ((p shr 8) and 0xFF).toFloat())
        out.put(3 * i + 2, (p and 0xFF).toFloat())
    }
}

/** The bundle's expected self-test map (`self_test/expected_classes.u8` or `.u16`, little-endian). */
fun expectedClasses(bytes: ByteArray, dtype: String, count: Int): IntArray = when (dtype) {
    "uint8" -> {
        require(bytes.size == count) { "expected classes: ${bytes.size} bytes for $count pixels" }
        IntArray(count) { bytes[it].toInt() and 0xFF }
    }
    "uint16le" -> {
        require(bytes.size == 2 * count) { "expected classes: ${bytes.size} bytes for $count pixels" }
        IntArray(count) { (bytes[2 * it].toInt() and 0xFF) or ((bytes[2 * it + 1].toInt() and 0xFF) shl 8) }
    }
    else -> throw IllegalArgumentException("expected classes dtype $dtype: uint8 or uint16le")
}

/** Fraction of pixels whose class equals the expected one (0 when the sizes differ). */
fun agreement(classMap: IntArray, expected: IntArray): Double {
    if (classMap.size != expected.size || expected.isEmpty()) return 0.0
    var same = 0
    for (i in expected.indices) if (classMap[i] == expected[i]) same++
    return same.toDouble() / expected.size
}
