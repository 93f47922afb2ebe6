// The bundle's .tflite in MediaPipe's ImageSegmenter (WebAssembly, CPU), with the runtime vendored
// beside this page: everything comes from this folder, nothing from a CDN.
import { FilesetResolver, ImageSegmenter } from "./vendor/tasks-vision/vision_bundle.mjs";

const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

async function fetchOk(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r;
}

async function loadImage(url) {
  const img = new Image();
  img.src = url;
  await img.decode();
  return img;
}

// The golden image through the model, compared pixel by pixel with the float model's class map.
async function selfTest(segmenter, manifest, model) {
  const el = $("self-test");
  const test = manifest.self_test;
  const [h, w] = test.shape;
  const expected = new Uint8Array(await (await fetchOk(test.expected_classes)).arrayBuffer());
  const image = await loadImage(test.image);
  const result = segmenter.segment(image);
  const mask = result.categoryMask;
  let agreement = 0;
  if (mask.width === w && mask.height === h && expected.length === w * h) {
    const got = mask.getAsUint8Array();
    let same = 0;
    for (let i = 0; i < got.length; i++) if (got[i] === expected[i]) same++;
    agreement = same / got.length;
  }
  result.close();
  const bar = test.min_agreement[model.file];
  const pass = agreement >= bar;
  el.dataset.agreement = agreement.toFixed(6);
  el.dataset.status = pass ? "pass" : "fail";
  el.textContent = `self-test: ${pass ? "pass" : "FAIL"}, ${(100 * agreement).toFixed(2)} % of pixels agree ` +
    `with the float model (needs ${(100 * bar).toFixed(0)} %)`;
}

function drawOverlay(source, width, height, mask, palette, classes) {
  const canvas = $("view");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0, width, height);
  const classMap = mask.getAsUint8Array();
  const paint = new ImageData(mask.width, mask.height);
  const alpha = Math.round(255 * Number($("alpha").value));
  const seen = new Set();
  for (let i = 0; i < classMap.length; i++) {
    const c = palette[classMap[i]] || [0, 0, 0];
    seen.add(classMap[i]);
    paint.data.set([c[0], c[1], c[2], alpha], 4 * i);
  }
  const layer = new OffscreenCanvas(mask.width, mask.height);
  layer.getContext("2d").putImageData(paint, 0, 0);
  ctx.drawImage(layer, 0, 0, width, height);
  $("legend").replaceChildren(...[...seen].sort((a, b) => a - b).map((k) => {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    const c = palette[k] || [0, 0, 0];
    swatch.style.background = `rgb(${c[0]},${c[1]},${c[2]})`;
    li.append(swatch, classes[k] ?? `class ${k}`);
    return li;
  }));
}

function segmentAndDraw(segmenter, source, width, height, labels) {
  const result = segmenter.segment(source);
  drawOverlay(source, width, height, result.categoryMask, labels.palette, labels.classes);
  result.close();
}

async function main() {
  const manifest = await (await fetchOk("model_info.json")).json();
  const labels = await (await fetchOk(manifest.labels.json)).json();
  const model = manifest.models.find((m) => m.runtime === "tflite");
  $("title").textContent = `${manifest.model}: ${manifest.num_classes} classes (${labels.dataset})`;
  const wasm = new URL(`${manifest.web.vendor_dir}/wasm`, document.baseURI).href;
  const fileset = await FilesetResolver.forVisionTasks(wasm);
  const segmenter = await ImageSegmenter.createFromOptions(fileset, {
    baseOptions: { modelAssetPath: model.file, delegate: "CPU" },
    runningMode: "IMAGE",
    outputCategoryMask: true,
    outputConfidenceMasks: false,
  });
  status(`${model.file} loaded (${model.variant}); choose a photo or start the camera`);
  try {
    await selfTest(segmenter, manifest, model);
  } catch (err) {
    $("self-test").dataset.status = "fail";
    $("self-test").dataset.agreement = "0";
    $("self-test").textContent = `self-test: FAIL (${err.message})`;
  }

  $("photo").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    const img = await loadImage(URL.createObjectURL(file));
    segmentAndDraw(segmenter, img, img.naturalWidth, img.naturalHeight, labels);
    status(`${file.name}: ${img.naturalWidth}x${img.naturalHeight}`);
  });

  let streaming = false;
  $("camera").addEventListener("click", async () => {
    const video = $("video");
    if (streaming) {
      video.srcObject.getTracks().forEach((t) => t.stop());
      streaming = false;
      $("camera").textContent = "Start camera";
      return;
    }
    // a camera needs a secure context: the page served from 127.0.0.1, localhost or over HTTPS
    if (!window.isSecureContext || !navigator.mediaDevices) {
      status("the camera needs this page on 127.0.0.1, localhost or HTTPS (on a phone: serve the folder " +
        "over HTTPS); choosing a photo works anywhere");
      return;
    }
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    await video.play();
    streaming = true;
    $("camera").textContent = "Stop camera";
    await segmenter.setOptions({ runningMode: "VIDEO" });
    const frame = async () => {
      if (!streaming) { await segmenter.setOptions({ runningMode: "IMAGE" }); return; }
      const result = segmenter.segmentForVideo(video, performance.now());
      drawOverlay(video, video.videoWidth, video.videoHeight, result.categoryMask, labels.palette, labels.classes);
      result.close();
      status(`camera: ${video.videoWidth}x${video.videoHeight}`);
      requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  });
}

main().catch((err) => {
  status(`error: ${err.message}`);
  const el = $("self-test");
  if (el.dataset.status === "running") {
    el.dataset.status = "fail";
    el.dataset.agreement = "0";
    el.textContent = `self-test: FAIL (${err.message})`;
  }
});
