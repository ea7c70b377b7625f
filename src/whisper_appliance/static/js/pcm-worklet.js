/* AudioWorklet processor "pcm16-capture": microphone audio at the context's rate (44.1/48 kHz or anything else)
 * -> low-pass filtered, resampled to 16 kHz mono -> 16-bit little-endian PCM, posted to the main thread in
 * batches of ~250 ms, plus the input level (RMS and peak) about 20 times a second.
 *
 * Resampling: a windowed-sinc FIR low-pass (cut-off just below the 8 kHz Nyquist of the output, so nothing
 * above it folds back into speech) evaluated only at the output instants, with linear interpolation between
 * the two nearest filtered input samples for non-integer ratios such as 44.1 kHz -> 16 kHz.
 *
 * Messages in:  {type: "flush"} (post what is batched now, then {type: "flushed"}). Messages out: {type: "chunk",
 * buffer: ArrayBuffer, samples}, {type: "level", rms, peak}, {type: "flushed"}. The MediaRecorder path keeps
 * these chunks too, to resend after a dropped connection. */
"use strict";

const OUT_RATE = 16000;
const BATCH_SECONDS = 0.25;
const LEVEL_SECONDS = 0.05;
const TAPS = 63; // odd: a symmetric, linear-phase filter with a centre tap

function lowPassKernel(inRate) {
  // Cut-off at 7.2 kHz (0.9 x the output Nyquist) as a fraction of the input rate; Blackman window.
  const cutoff = Math.min(0.5, (0.45 * OUT_RATE) / inRate);
  const kernel = new Float32Array(TAPS);
  const mid = (TAPS - 1) / 2;
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const n = i - mid;
    const sinc = n === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * n) / (Math.PI * n);
    const window = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (TAPS - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (TAPS - 1));
    kernel[i] = sinc * window;
    sum += kernel[i];
  }
  for (let i = 0; i < TAPS; i++) kernel[i] /= sum; // unity gain at DC
  return kernel;
}

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.inRate = sampleRate; // AudioWorkletGlobalScope's context rate
    this.step = this.inRate / OUT_RATE; // input samples per output sample
    this.passthrough = Math.abs(this.step - 1) < 1e-9;
    this.kernel = lowPassKernel(this.inRate);
    // Input history: the FIR needs TAPS samples behind the newest one; kept as a growing window that is
    // trimmed after every block so it never holds more than a block plus the filter length.
    this.history = new Float32Array(0);
    this.historyStart = 0; // absolute input index of history[0]
    this.nextOut = 0; // absolute (fractional) input position of the next output sample
    this.batch = new Int16Array(Math.round(OUT_RATE * BATCH_SECONDS));
    this.batchLength = 0;
    this.levelSum = 0;
    this.levelPeak = 0;
    this.levelCount = 0;
    this.levelEvery = Math.round(this.inRate * LEVEL_SECONDS);
    this.port.onmessage = (event) => this.onMessage(event.data || {});
  }

  onMessage(message) {
    if (message.type === "flush") {
      this.postBatch();
      this.port.postMessage({type: "flushed"});
    }
  }

  postBatch() {
    if (this.batchLength === 0) return;
    const buffer = new ArrayBuffer(this.batchLength * 2);
    const view = new DataView(buffer);
    for (let i = 0; i < this.batchLength; i++) view.setInt16(i * 2, this.batch[i], true); // little-endian
    this.port.postMessage({type: "chunk", buffer, samples: this.batchLength}, [buffer]);
    this.batchLength = 0;
  }

  pushSample(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.batch[this.batchLength++] = clipped < 0 ? Math.round(clipped * 0x8000) : Math.round(clipped * 0x7fff);
    if (this.batchLength === this.batch.length) this.postBatch();
  }

  meter(samples) {
    for (let i = 0; i < samples.length; i++) {
      const v = samples[i];
      this.levelSum += v * v;
      const a = Math.abs(v);
      if (a > this.levelPeak) this.levelPeak = a;
      if (++this.levelCount >= this.levelEvery) {
        this.port.postMessage({type: "level", rms: Math.sqrt(this.levelSum / this.levelCount), peak: this.levelPeak});
        this.levelSum = 0;
        this.levelPeak = 0;
        this.levelCount = 0;
      }
    }
  }

  filteredAt(index) {
    // FIR output centred on absolute input index ``index`` (so the filter adds no delay to timestamps).
    const half = (TAPS - 1) / 2;
    const base = index - half - this.historyStart;
    let acc = 0;
    for (let k = 0; k < TAPS; k++) acc += this.kernel[k] * this.history[base + k];
    return acc;
  }

  resample(samples) {
    if (this.passthrough) {
      for (let i = 0; i < samples.length; i++) this.pushSample(samples[i]);
      return;
    }
    const merged = new Float32Array(this.history.length + samples.length);
    merged.set(this.history);
    merged.set(samples, this.history.length);
    this.history = merged;
    const half = (TAPS - 1) / 2;
    const end = this.historyStart + this.history.length; // one past the newest absolute index
    // An output at position p needs filtered samples floor(p) and floor(p)+1, each needing ``half`` ahead.
    while (Math.floor(this.nextOut) + 1 + half < end) {
      const i0 = Math.floor(this.nextOut);
      const frac = this.nextOut - i0;
      const a = i0 - half < this.historyStart ? 0 : this.filteredAt(i0);
      const b = frac === 0 ? a : (i0 + 1 - half < this.historyStart ? 0 : this.filteredAt(i0 + 1));
      this.pushSample(a + (b - a) * frac);
      this.nextOut += this.step;
    }
    // Keep what the next outputs still need: from floor(nextOut) - half on.
    const keepFrom = Math.max(this.historyStart, Math.floor(this.nextOut) - half);
    this.history = this.history.slice(keepFrom - this.historyStart);
    this.historyStart = keepFrom;
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      // Mono: average the channels (capture asks for one, but some devices give two).
      let mono = input[0];
      if (input.length > 1) {
        mono = new Float32Array(input[0].length);
        for (const channel of input) for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / input.length;
      }
      this.meter(mono);
      this.resample(mono);
    }
    return true; // keep running until the node is disconnected
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
