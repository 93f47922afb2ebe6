package org.hrvitmobile.demo

import android.content.Context
import org.json.JSONArray
import org.json.JSONObject
import java.io.File

/**
 * The bundle folder copied into the app's assets under "bundle/". Refuses a bundle whose manifest
 * disagrees with ModelConfig; integrity (sha256 of every file) is checked on the build machine with
 * `hrvit-mobile bundle --verify`.
 */
class SegmentationBundle(private val context: Context, private val dir: String = "bundle") {
    val labels: List<String> = read(ModelConfig.LABELS_FILE).lines().filter { it.isNotEmpty() }
    val palette: IntArray = read(ModelConfig.PALETTE_FILE).lines().filter { it.isNotEmpty() }.map { line ->
        val (r, g, b) = line.split(" ").map { it.toInt() }
        (0xFF shl 24) or (r shl 16) or (g shl 8) or b
    }.toIntArray()

    init {
        val m = JSONObject(read(ModelConfig.MODEL_INFO_FILE))
        val input = m.getJSONObject("input")
        val output = m.getJSONObject("output")
        val norm = input.getJSONObject("normalization")
        fun longs(a: JSONArray) = LongArray(a.length()) { a.getLong(it) }
        fun floats(a: JSONArray) = FloatArray(a.length()) { a.getDouble(it).toFloat() }
        check(input.getString("name") == ModelConfig.INPUT_NAME) { "input name" }
        check(longs(input.getJSONArray("shape")).contentEquals(ModelConfig.INPUT_SHAPE)) { "input shape" }
        check(output.getString("name") == ModelConfig.OUTPUT_NAME) { "output name" }
        check(longs(output.getJSONArray("shape")).contentEquals(ModelConfig.OUTPUT_SHAPE)) { "output shape" }
        check(floats(norm.getJSONArray("mean")).contentEquals(ModelConfig.MEAN)) { "mean" }
        check(floats(norm.getJSONArray("std")).contentEquals(ModelConfig.STD)) { "std" }
        check(m.getJSONObject("labels").getString("txt") == ModelConfig.LABELS_FILE) { "labels file" }
        val models = m.getJSONArray("models")
        for (i in 0 until models.length()) {
            val model = models.getJSONObject(i)
            if (model.getString("runtime") != "tflite") continue
            val tfliteIn = longs(model.getJSONObject("input").getJSONArray("shape"))
            val tfliteOut = longs(model.getJSONArray("outputs").getJSONObject(0).getJSONArray("shape"))
            check(tfliteIn.contentEquals(ModelConfig.TFLITE_INPUT_SHAPE)) { "tflite input shape" }
            check(tfliteOut.contentEquals(ModelConfig.TFLITE_OUTPUT_SHAPE)) { "tflite output shape" }
        }
        check(m.getInt("num_classes") == ModelConfig.NUM_CLASSES && labels.size == ModelConfig.NUM_CLASSES &&
            palette.size == ModelConfig.NUM_CLASSES) { "class count" }
    }

    fun has(name: String): Boolean = context.assets.list(dir)?.contains(name) == true

    /** Runtimes take a file path: copy the model out of the APK's assets once. */
    fun file(name: String): File {
        val out = File(context.filesDir, name)
        if (!out.exists()) context.assets.open("$dir/$name").use { src -> out.outputStream().use { src.copyTo(it) } }
        return out
    }

    private fun read(name: String) = context.assets.open("$dir/$name").bufferedReader().use { it.readText() }
}
