package org.hrvitmobile.demo

import android.graphics.Bitmap
import org.tensorflow.lite.Interpreter

/** LiteRT Interpreter, called through the model's signature so tensors are addressed by name. */
class LiteRtSegmenter(bundle: SegmentationBundle, threads: Int = 4) : AutoCloseable {
    private val interpreter = Interpreter(bundle.file(ModelConfig.TFLITE_MODEL_FILE), Interpreter.Options().setNumThreads(threads))

    fun segment(frame: Bitmap): ByteArray {
        val shape = ModelConfig.INPUT_SHAPE
        val input = Array(1) { Array(3) { Array(shape[2].toInt()) { FloatArray(shape[3].toInt()) } } }
        val flat = normalizedChw(frame)
        val h = shape[2].toInt(); val w = shape[3].toInt()
        for (c in 0 until 3) for (y in 0 until h) System.arraycopy(flat, c * h * w + y * w, input[0][c][y], 0, w)
        val out = ModelConfig.OUTPUT_SHAPE
        val logits = Array(1) { Array(out[1].toInt()) { Array(out[2].toInt()) { FloatArray(out[3].toInt()) } } }
        interpreter.runSignature(
            mapOf(ModelConfig.INPUT_NAME to input), mapOf(ModelConfig.OUTPUT_NAME to logits), ModelConfig.TFLITE_SIGNATURE
        )
        return argmaxClasses(logits[0].flatMap { plane -> plane.flatMap { it.asList() } }.toFloatArray())
    }

    override fun close() = interpreter.close()
}
