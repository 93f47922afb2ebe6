// Runs the Android demo's ClassMaps.kt on arrays written by tests/test_app_templates.py and writes the
// results back, so that the template's own code is compared with the Python implementation.
// args: DIR CLASSES HEIGHT WIDTH OUT_HEIGHT OUT_WIDTH IN_HEIGHT IN_WIDTH, or self-test ... (see selfTest)
import org.hrvitmobile.demo.ClassMapper
import org.hrvitmobile.demo.InputContract
import org.hrvitmobile.demo.Logits
import org.hrvitmobile.demo.agreement
import org.hrvitmobile.demo.expectedClasses
import org.hrvitmobile.demo.rgbHwcInto
import org.hrvitmobile.demo.upsampledClassMap
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer

fun floats(file: File): FloatBuffer {
    val bytes = file.readBytes()
    val buffer = ByteBuffer.allocateDirect(bytes.size).order(ByteOrder.LITTLE_ENDIAN)
    buffer.put(bytes)
    buffer.rewind()
    return buffer.asFloatBuffer()
}

fun writeFloats(file: File, values: FloatBuffer) {
    val out = ByteBuffer.allocate(4 * values.capacity()).order(ByteOrder.LITTLE_ENDIAN)
    for (i in 0 until values.capacity()) out.putFloat(values.get(i))
    file.writeBytes(out.array())
}

fun writeInts(file: File, values: IntArray) {
    val out = ByteBuffer.allocate(4 * values.size).order(ByteOrder.LITTLE_ENDIAN)
    for (v in values) out.putInt(v)
    file.writeBytes(out.array())
}

/** args: self-test LOGITS CLASSES HEIGHT WIDTH EXPECTED DTYPE OUT_HEIGHT OUT_WIDTH: prints the agreement. */
fun selfTest(args: List<String>) {
    val (k, h, w) = listOf(args[1], args[2], args[3]).map { it.toInt() }
    val logits = Logits(floats(File(args[0])), k, h, w, channelsLast = false)
    val outH = args[6].toInt()
    val outW = args[7].toInt()
    val expected = expectedClasses(File(args[4]).readBytes(), args[5], outH * outW)
    println(agreement(upsampledClassMap(logits, outH, outW), expected))
}

fun main(args: Array<String>) {
    if (args[0] == "self-test") return selfTest(args.drop(1))
    val dir = File(args[0])
    val (k, h, w, outH, outW, inH, inW) = args.drop(1).map { it.toInt() }
    val nchw = Logits(floats(File(dir, "nchw.f32")), k, h, w, channelsLast = false)
    val nhwc = Logits(floats(File(dir, "nhwc.f32")), k, h, w, channelsLast = true)
    val mapper = ClassMapper(k, h, w)
    File(dir, "nchw_classes.u8").writeBytes(mapper.map(nchw).copyOf())
    File(dir, "nhwc_classes.u8").writeBytes(mapper.map(nhwc).copyOf())
    val upsampled = upsampledClassMap(nchw, outH, outW)
    writeInts(File(dir, "upsampled.i32"), upsampled)
    val expected = expectedClasses(File(dir, "expected.u8").readBytes(), "uint8", outH * outW)
    File(dir, "agreement.txt").writeText(agreement(upsampled, expected).toString())

    val pixels = ByteBuffer.wrap(File(dir, "pixels.i32").readBytes()).order(ByteOrder.LITTLE_ENDIAN).asIntBuffer()
    val argb = IntArray(inH * inW) { pixels.get(it) }
    val contract = InputContract(listOf("a"), inH, inW, "NCHW", floatArrayOf(0.485f, 0.456f, 0.406f),
        floatArrayOf(0.229f, 0.224f, 0.225f), 1f / 255, 4)
    val normalized = FloatBuffer.allocate(3 * inH * inW)
    contract.normalizeInto(argb, normalized)
    writeFloats(File(dir, "normalized.f32"), normalized)
    val hwc = FloatBuffer.allocate(3 * inH * inW)
    rgbHwcInto(argb, hwc)
    writeFloats(File(dir, "hwc.f32"), hwc)
}

private operator fun <T> List<T>.component6() = this[5]
private operator fun <T> List<T>.component7() = this[6]
