package org.hrvitmobile.demo

import android.graphics.Bitmap
import org.tensorflow.lite.Interpreter
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * LiteRT Interpreter, called through the model's signature so tensors are addressed by name. The
 * .tflite takes the RGB frame as float32 0..255 NHWC (no normalization here: mean/std are inside the
 * model) and returns NHWC logits; both live in direct buffers reused across frames. Its contract is
 * ModelConfig's, checked against model_info.json by SegmentationBundle. The same file also loads in
 * MediaPipe's ImageSegmenter, which reads its labels and input contract from its metadata.
 */
class LiteRtSegmenter(bundle: SegmentationBundle, threads: Int = 4) : Segmenter, AutoCloseable {
    private val interpreter = Interpreter(bundle.file(ModelConfig.TFLITE_MODEL_FILE), Interpreter.Options().setNumThreads(threads))
    override val inputHeight = ModelConfig.TFLITE_INPUT_SHAPE[1].toInt()
    override val inputWidth = ModelConfig.TFLITE_INPUT_SHAPE[2].toInt()
    private val pixels = IntArray(inputHeight * inputWidth)
    private val input = direct(ModelConfig.TFLITE_INPUT_SHAPE)
    private val output = direct(ModelConfig.TFLITE_OUTPUT_SHAPE)
    // float views from position 0, made once; absolute puts and gets leave the buffers' positions alone
    private val inputFloats = input.asFloatBuffer()
    private val logits = Logits(
        output.asFloatBuffer(), ModelConfig.TFLITE_OUTPUT_SHAPE[3].toInt(), ModelConfig.TFLITE_OUTPUT_SHAPE[1].toInt(),
        ModelConfig.TFLITE_OUTPUT_SHAPE[2].toInt(), channelsLast = true
    )

    override fun logits(frame: Bitmap): Logits {
        scaledPixels(frame, inputWidth, inputHeight, pixels)
        rgbHwcInto(pixels, inputFloats)
        input.rewind(); output.rewind()
        interpreter.runSignature(
            mapOf(ModelConfig.INPUT_NAME to input), mapOf(ModelConfig.OUTPUT_NAME to output), ModelConfig.TFLITE_SIGNATURE
        )
        return logits
    }

    override fun close() = interpreter.close()

    private fun direct(shape: LongArray): ByteBuffer =
        ByteBuffer.allocateDirect(4 * shape.fold(1L) { a, b -> a * b }.toInt()).order(ByteOrder.nativeOrder())
}
