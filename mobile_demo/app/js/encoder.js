// The ONNX image encoder through onnxruntime-web (WASM backend, CPU). Threads only when the page is
// cross-origin isolated (SharedArrayBuffer); the .wasm/.mjs files are served from ./vendor/ort/.
import * as ort from "../vendor/ort/ort.wasm.min.mjs";
import { l2Normalize } from "./topk.js";

/** Threads the WASM backend may use on this page. */
export function wasmThreads() {
  if (!globalThis.crossOriginIsolated) return 1;
  return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
}

export class Encoder {
  constructor(session, entry, size) {
    this.session = session;
    this.entry = entry;
    this.size = size;
  }

  /** (1, 3, S, S) float32 pixels -> (D,) L2-normalised float32 embedding. */
  async embed(pixels) {
    const input = new ort.Tensor("float32", pixels, [1, 3, this.size, this.size]);
    const outputs = await this.session.run({ [this.entry.input.name]: input });
    const output = outputs[this.entry.output.name] ?? Object.values(outputs)[0];
    return l2Normalize(output.data);
  }
}

/** Create the session from the model bytes. */
export async function loadEncoder(bytes, entry, inputSize) {
  ort.env.wasm.wasmPaths = new URL("../vendor/ort/", import.meta.url).href;
  ort.env.wasm.numThreads = wasmThreads();
  ort.env.wasm.proxy = false;
  ort.env.logLevel = "error";
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
  });
  return new Encoder(session, entry, inputSize);
}

export const ortVersion = ort.env.versions?.web ?? "unknown";
