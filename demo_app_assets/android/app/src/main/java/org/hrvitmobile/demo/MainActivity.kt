package org.hrvitmobile.demo

import android.os.Bundle
import android.widget.ImageView
import androidx.activity.ComponentActivity
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.core.content.ContextCompat
import android.widget.FrameLayout
import java.util.concurrent.Executors

/** Camera preview with the segmentation overlay: LiteRT when the bundle has model.tflite, else ExecuTorch. */
class MainActivity : ComponentActivity() {
    private val worker = Executors.newSingleThreadExecutor()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val bundle = SegmentationBundle(this)
        val segment: (android.graphics.Bitmap) -> ByteArray =
            if (bundle.has(ModelConfig.TFLITE_MODEL_FILE)) LiteRtSegmenter(bundle)::segment
            else ExecuTorchSegmenter(bundle)::segment

        val preview = PreviewView(this).apply { scaleType = PreviewView.ScaleType.FIT_CENTER }
        val overlay = ImageView(this).apply { scaleType = ImageView.ScaleType.FIT_XY }
        setContentView(FrameLayout(this).apply { addView(preview); addView(overlay) })

        // the camera permission request is left out for brevity; grant it in the system settings
        val providerFuture = ProcessCameraProvider.getInstance(this)
        providerFuture.addListener({
            val provider = providerFuture.get()
            val analysis = ImageAnalysis.Builder()
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .build()
            analysis.setAnalyzer(worker) { image ->
                val frame = image.toBitmap()
                image.close()
                val classes = segment(frame)
                val bitmap = overlayBitmap(classes, bundle.palette)
                runOnUiThread { overlay.setImageBitmap(bitmap) }
            }
            val cameraPreview = Preview.Builder().build().also { it.setSurfaceProvider(preview.surfaceProvider) }
            provider.bindToLifecycle(this, androidx.camera.core.CameraSelector.DEFAULT_BACK_CAMERA, cameraPreview, analysis)
        }, ContextCompat.getMainExecutor(this))
    }
}
