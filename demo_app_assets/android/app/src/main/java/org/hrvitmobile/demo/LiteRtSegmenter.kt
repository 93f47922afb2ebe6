package org.hrvitmobile.demo

import android.graphics.Bitmap
import org.tensorflow.lite.Interpreter
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * LiteRT Interpreter, called through the model's signature so tensors are addressed by name. The
 * .tflite takes the RGB frame as float32 0..255 NHWC (no normalization here: mean/std are inside the
 * model) and returns NHWC logits; both live in direct buffers reused across frames. The same file
 * also loads in MediaPipe's ImageSegmenter, which reads its labels and input contract from its metadata.
 */
class LiteRtSegmenter(bundle: SegmentationBundle, threads: Int = 4) : AutoCloseable {
    private val interpreter = Interpreter(bundle.file(ModelConfig.TFLITE_MODEL_FILE), Interpreter.Options().setNumThreads(threads))
    private val input = direct(ModelConfig.TFLITE_INPUT_SHAPE)
    private val logits = direct(ModelConfig.TFLITE_OUTPUT_SHAPE)

    fun segment(frame: Bitmap): ByteArray {
        input.rewind(); logits.rewind()
        rgbHwc(frame, input.asFloatBuffer()) // a view from position 0: the buffer's own position stays 0
        interpreter.runSignature(
            mapOf(ModelConfig.INPUT_NAME to input), mapOf(ModelConfig.OUTPUT_NAME to logits), ModelConfig.TFLITE_SIGNATURE
        )
        logits.rewind()
        return argmaxClassesHwc(logits.asFloatBuffer())
    }

    override fun close() = interpreter.close()

    private fun direct(shape: LongArray): ByteBuffer =
        ByteBuffer.allocateDirect(4 * shape.fold(1L) { a, b -> a * b }.toInt()).order(ByteOrder.nativeOrder())
}
