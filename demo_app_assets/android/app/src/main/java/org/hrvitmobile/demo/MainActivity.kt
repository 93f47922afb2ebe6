package org.hrvitmobile.demo

import android.os.Bundle
import android.view.Gravity
import android.widget.FrameLayout
import android.widget.ImageView
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.core.content.ContextCompat
import java.util.concurrent.Executors

/**
 * Camera preview with the segmentation overlay: LiteRT when the bundle has model.tflite, else ExecuTorch.
 * At first launch the bundle's self-test runs on the worker thread before the first frame; its result
 * (pass/fail, pixel agreement) stays on screen.
 */
class MainActivity : ComponentActivity() {
    private val worker = Executors.newSingleThreadExecutor()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val bundle = SegmentationBundle(this)
        val choice: Pair<Segmenter, String> =
            if (bundle.has(ModelConfig.TFLITE_MODEL_FILE)) LiteRtSegmenter(bundle) to ModelConfig.TFLITE_MODEL_FILE
            else ExecuTorchSegmenter(bundle) to ModelConfig.EXECUTORCH_MODEL_FILE
        val (segmenter, modelFile) = choice

        val preview = PreviewView(this).apply { scaleType = PreviewView.ScaleType.FIT_CENTER }
        val overlay = ImageView(this).apply { scaleType = ImageView.ScaleType.FIT_XY }
        val selfTest = TextView(this).apply { text = "self-test: running"; setBackgroundColor(0x99000000.toInt()) }
        setContentView(FrameLayout(this).apply {
            addView(preview); addView(overlay)
            addView(selfTest, FrameLayout.LayoutParams(FrameLayout.LayoutParams.WRAP_CONTENT,
                FrameLayout.LayoutParams.WRAP_CONTENT, Gravity.TOP or Gravity.START))
        })
        worker.execute {
            val text = try {
                SelfTest.runOnce(this, bundle, segmenter, modelFile).describe()
            } catch (e: Exception) {
                "self-test ($modelFile): FAIL (${e.message})"
            }
            runOnUiThread { selfTest.text = text }
        }

        // the camera permission request is left out for brevity; grant it in the system settings
        val providerFuture = ProcessCameraProvider.getInstance(this)
        providerFuture.addListener({
            val provider = providerFuture.get()
            val analysis = ImageAnalysis.Builder()
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .build()
            var mapper: ClassMapper? = null
            analysis.setAnalyzer(worker) { image ->
                val frame = image.toBitmap()
                image.close()
                val logits = segmenter.logits(frame)
                val m = mapper ?: ClassMapper(logits.classes, logits.height, logits.width).also { mapper = it }
                val bitmap = overlayBitmap(m.map(logits), m.width, m.height, bundle.palette)
                runOnUiThread { overlay.setImageBitmap(bitmap) }
            }
            val cameraPreview = Preview.Builder().build().also { it.setSurfaceProvider(preview.surfaceProvider) }
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, cameraPreview, analysis)
        }, ContextCompat.getMainExecutor(this))
    }
}
