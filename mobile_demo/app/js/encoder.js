// The ONNX image encoder through onnxruntime-web (WASM backend, CPU). Threads only when the page is
// cross-origin isolated (SharedArrayBuffer); the .wasm/.mjs files are served from ./vendor/ort/.
import * as ort from "../vendor/ort/ort.wasm.min.mjs";
import { l2Normalize } from "./topk.js";

/** Threads the WASM backend uses: 1 unless cross-origin isolated, else ?threads=N or min(4, cores). */
export function wasmThreads() {
  if (!globalThis.crossOriginIsolated) return 1;
  const cores = navigator.hardwareConcurrency || 1;
  const requested = Number(new URLSearchParams(location.search).get("threads"));
  return Number.isInteger(requested) && requested > 0 ? Math.min(requested, cores) : Math.max(1, Math.min(4, cores));
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
    // Idle pool threads sleep instead of spinning, leaving the cores to the page's own work
    // (resize, table search) between inferences.
    extra: { session: { intra_op: { allow_spinning: "0" } } },
  });
  return new Encoder(session, entry, inputSize);
}

export const ortVersion = ort.env.versions?.web ?? "unknown";
