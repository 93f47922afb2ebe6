package org.hrvitmobile.demo

import android.graphics.Bitmap
import org.json.JSONArray
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.nio.FloatBuffer

/**
 * ExecuTorch (XNNPACK) through its Android Module API. The input contract comes from the .pte itself:
 * its constant methods (labels, input_size, input_layout, mean, std, pixel_scale, output_stride)
 * return what the exporter wrote, so no model constant lives in this app. At load the contract is
 * checked against the bundle's labels.txt and model_info.json; a mismatch refuses the bundle.
 */
class ExecuTorchSegmenter(bundle: SegmentationBundle) : Segmenter {
    private val module = Module.load(bundle.file(ModelConfig.EXECUTORCH_MODEL_FILE).absolutePath)
    val contract = readContract(module)
    override val inputWidth get() = contract.width
    override val inputHeight get() = contract.height
    private val pixels = IntArray(contract.height * contract.width)
    // one direct buffer for every frame: the tensor wraps it, normalizeInto overwrites it
    private val input: FloatBuffer = Tensor.allocateFloatBuffer(3 * pixels.size)
    private val inputTensor = Tensor.fromBlob(input, longArrayOf(1, 3, contract.height.toLong(), contract.width.toLong()))

    init {
        // placeholder names (class_<i>) carry none: then labels.txt names the classes
        val placeholders = contract.labels == List(contract.labels.size) { "class_$it" }
        check(contract.labels.size == bundle.labels.size && (placeholders || contract.labels == bundle.labels)) {
            "the .pte's labels differ from ${ModelConfig.LABELS_FILE}"
        }
        val info = bundle.manifest.getJSONObject("input")
        val shape = info.getJSONArray("shape")
        check(shape.getInt(2) == contract.height && shape.getInt(3) == contract.width) {
            "the .pte's input size ${contract.height}x${contract.width} differs from ${ModelConfig.MODEL_INFO_FILE}"
        }
        val norm = info.getJSONObject("normalization")
        check(floats(norm.getJSONArray("mean")).contentEquals(contract.mean) &&
            floats(norm.getJSONArray("std")).contentEquals(contract.std)) {
            "the .pte's mean/std differ from ${ModelConfig.MODEL_INFO_FILE}"
        }
    }

    override fun logits(frame: Bitmap): Logits {
        scaledPixels(frame, contract.width, contract.height, pixels)
        contract.normalizeInto(pixels, input)
        val out = module.execute(ModelConfig.EXECUTORCH_METHOD, EValue.from(inputTensor))[0].toTensor()
        val shape = out.shape() // N, classes, H / stride, W / stride
        // the output tensor's own buffer, read in place (dataAsFloatArray would copy it every frame)
        return Logits(out.getRawDataBuffer() as FloatBuffer, shape[1].toInt(), shape[2].toInt(), shape[3].toInt(),
            channelsLast = false)
    }
}

/** The .pte's constant methods: each returns its values as EValues (strings, longs or doubles). */
private fun readContract(module: Module): InputContract {
    fun values(method: String): Array<EValue> = module.execute(method)
    val size = values("input_size").map { it.toInt().toInt() }
    return InputContract(
        labels = values("labels").map { it.toStr() },
        height = size[0],
        width = size[1],
        layout = values("input_layout")[0].toStr(),
        mean = values("mean").map { it.toDouble().toFloat() }.toFloatArray(),
        std = values("std").map { it.toDouble().toFloat() }.toFloatArray(),
        pixelScale = values("pixel_scale")[0].toDouble().toFloat(),
        outputStride = values("output_stride")[0].toInt().toInt()
    )
}

private fun floats(a: JSONArray) = FloatArray(a.length()) { a.getDouble(it).toFloat() }
