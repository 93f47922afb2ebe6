package org.hrvitmobile.demo

import android.graphics.Bitmap
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/** ExecuTorch (XNNPACK) through its Android Module API. */
class ExecuTorchSegmenter(bundle: SegmentationBundle) {
    private val module = Module.load(bundle.file(ModelConfig.EXECUTORCH_MODEL_FILE).absolutePath)

    fun segment(frame: Bitmap): ByteArray {
        val input = Tensor.fromBlob(normalizedChw(frame), ModelConfig.INPUT_SHAPE)
        val logits = module.execute(ModelConfig.EXECUTORCH_METHOD, EValue.from(input))[0].toTensor()
        return argmaxClasses(logits.dataAsFloatArray)
    }
}
