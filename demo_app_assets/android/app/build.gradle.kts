// Minimal module build file for the demo sources; versions are the ones the templates were written
// against (not built here: there is no Android SDK on the development machine; see docs/bundles.md).
plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "org.hrvitmobile.demo"
    compileSdk = 35
    defaultConfig {
        applicationId = "org.hrvitmobile.demo"
        minSdk = 26
        targetSdk = 35
    }
    // the bundle folder goes into assets/bundle; keep models uncompressed so they can be memory-mapped
    androidResources { noCompress += listOf("tflite", "pte") }
}

dependencies {
    implementation("com.google.ai.edge.litert:litert:1.4.0")
    implementation("org.pytorch:executorch-android:1.4.1") // Tensor.getRawDataBuffer() is public from 1.4
    implementation("androidx.activity:activity-ktx:1.9.3")
    implementation("androidx.camera:camera-camera2:1.4.1")
    implementation("androidx.camera:camera-lifecycle:1.4.1")
    implementation("androidx.camera:camera-view:1.4.1")
}
