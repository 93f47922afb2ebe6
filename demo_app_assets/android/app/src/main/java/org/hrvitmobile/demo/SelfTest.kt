package org.hrvitmobile.demo

import android.content.Context

/** Outcome of the bundle's self-test for one model file. */
class SelfTestResult(val passed: Boolean, val agreement: Double, val bar: Double, val modelFile: String) {
    fun describe() = "self-test ($modelFile): ${if (passed) "pass" else "FAIL"}, " +
        "%.2f %% of pixels agree with the float model (needs %.0f %%)".format(100 * agreement, 100 * bar)
}

/**
 * The bundle's self-test, as the web page runs it: the golden image (`self_test/input.png`, already at
 * the input size) through the model; its logits resized bilinearly to the image and argmaxed; compared
 * pixel by pixel with the float model's map (`self_test/expected_classes.u8|u16`). It passes at the
 * manifest's `min_agreement` for the model file. Run once at first launch: the result is kept in
 * SharedPreferences under the bundle's logits digest and the model file, so a new bundle runs it again.
 */
object SelfTest {
    private const val PREFS = "hrvit_demo_self_test"

    fun runOnce(context: Context, bundle: SegmentationBundle, segmenter: Segmenter, modelFile: String): SelfTestResult {
        val entry = bundle.manifest.getJSONObject("self_test")
        val bar = entry.getJSONObject("min_agreement").getDouble(modelFile)
        val key = entry.getString("logits_sha256") + ":" + modelFile
        val prefs = context.getSharedPreferences(PREFS, Context.MODE_PRIVATE)
        if (prefs.contains("$key:agreement")) {
            return SelfTestResult(prefs.getBoolean("$key:passed", false),
                prefs.getFloat("$key:agreement", 0f).toDouble(), bar, modelFile)
        }
        val result = run(bundle, segmenter, modelFile)
        prefs.edit().putBoolean("$key:passed", result.passed).putFloat("$key:agreement", result.agreement.toFloat()).apply()
        return result
    }

    fun run(bundle: SegmentationBundle, segmenter: Segmenter, modelFile: String): SelfTestResult {
        val entry = bundle.manifest.getJSONObject("self_test")
        val bar = entry.getJSONObject("min_agreement").getDouble(modelFile)
        val h = entry.getJSONArray("shape").getInt(0)
        val w = entry.getJSONArray("shape").getInt(1)
        val expected = expectedClasses(bundle.bytes(entry.getString("expected_classes")), entry.getString("dtype"), h * w)
        val golden = bundle.bitmap(entry.getString("image"))
        val classes = upsampledClassMap(segmenter.logits(golden), h, w)
        val a = agreement(classes, expected)
        return SelfTestResult(a >= bar, a, bar, modelFile)
    }
}
