package org.hrvitmobile.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import org.json.JSONArray
import org.json.JSONObject
import java.io.File

/**
 * The bundle folder copied into the app's assets under "bundle/". Refuses a bundle whose manifest
 * disagrees with ModelConfig (the LiteRT contract) or whose labels disagree with its class count;
 * integrity (sha256 of every file) is checked on the build machine with `hrvit-mobile bundle --verify`.
 */
class SegmentationBundle(private val context: Context, private val dir: String = "bundle") {
    val manifest = JSONObject(read(ModelConfig.MODEL_INFO_FILE))
    val labels: List<String> = read(ModelConfig.LABELS_FILE).lines().filter { it.isNotEmpty() }
    val palette: IntArray = read(ModelConfig.PALETTE_FILE).lines().filter { it.isNotEmpty() }.map { line ->
        val (r, g, b) = line.split(" ").map { it.toInt() }
        (0xFF shl 24) or (r shl 16) or (g shl 8) or b
    }.toIntArray()

    init {
        val input = manifest.getJSONObject("input")
        val output = manifest.getJSONObject("output")
        fun longs(a: JSONArray) = LongArray(a.length()) { a.getLong(it) }
        check(input.getString("name") == ModelConfig.INPUT_NAME) { "input name" }
        check(output.getString("name") == ModelConfig.OUTPUT_NAME) { "output name" }
        check(manifest.getJSONObject("labels").getString("txt") == ModelConfig.LABELS_FILE) { "labels file" }
        val k = manifest.getInt("num_classes")
        check(labels.size == k && palette.size == k) { "class count: ${labels.size} labels, ${palette.size} colours, $k classes" }
        val models = manifest.getJSONArray("models")
        for (i in 0 until models.length()) {
            val model = models.getJSONObject(i)
            if (model.getString("runtime") != "tflite") continue
            val tfliteIn = longs(model.getJSONObject("input").getJSONArray("shape"))
            val tfliteOut = longs(model.getJSONArray("outputs").getJSONObject(0).getJSONArray("shape"))
            check(tfliteIn.contentEquals(ModelConfig.TFLITE_INPUT_SHAPE)) { "tflite input shape" }
            check(tfliteOut.contentEquals(ModelConfig.TFLITE_OUTPUT_SHAPE)) { "tflite output shape" }
            check(k == ModelConfig.NUM_CLASSES) { "class count $k, ModelConfig says ${ModelConfig.NUM_CLASSES}" }
        }
    }

    fun has(name: String): Boolean = context.assets.list(dir)?.contains(name) == true

    /** Runtimes take a file path: copy the model out of the APK's assets once. */
    fun file(name: String): File {
        val out = File(context.filesDir, name)
        if (!out.exists()) context.assets.open("$dir/$name").use { src -> out.outputStream().use { src.copyTo(it) } }
        return out
    }

    fun bytes(name: String): ByteArray = context.assets.open("$dir/$name").use { it.readBytes() }

    /** An image of the bundle at its own size (no density scaling), ARGB_8888. */
    fun bitmap(name: String): Bitmap = context.assets.open("$dir/$name").use {
        BitmapFactory.decodeStream(it, null, BitmapFactory.Options().apply {
            inScaled = false
            inPreferredConfig = Bitmap.Config.ARGB_8888
        }) ?: throw IllegalStateException("$name is not an image")
    }

    private fun read(name: String) = context.assets.open("$dir/$name").bufferedReader().use { it.readText() }
}
