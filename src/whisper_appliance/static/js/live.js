/* Live dictation on the main page: microphone -> Socket.IO (default namespace) -> committed + partial text.
 *
 * Protocol: start_recording {language, task, format, sample_rate} -> recording_started {session_id, ...};
 * audio_chunk {audio_data: ArrayBuffer, seq} about every 250 ms; transcription_partial {text} replaces the grey
 * partial; transcription_result {text, start, end, final} is appended to the committed text and never
 * retracted; stop_recording -> recording_stopped {text, duration, history_id}; transcription_error
 * {code, message} goes to the status line.
 *
 * Capture: "pcm16" (default) runs pcm-worklet.js, which low-passes and resamples to 16 kHz Int16 LE; "webm"
 * uses MediaRecorder (Opus) with start(250). The browser's echo cancellation, noise suppression and automatic
 * gain are off unless the user turns them on: they distort clean speech and cost accuracy.
 *
 * When the connection drops, the committed text stays and socket.io reconnects. The server keeps the session
 * for a while (LIVE_RESUME_SECONDS): start_recording {resume: resume_token, received_until} goes on with it,
 * and recording_started says how much audio the server holds (audio_seconds), so the page sends what it
 * captured from there on: one session, one text, one history entry. The worklet's 16 kHz PCM is kept in both
 * formats until a committed result covers it, for that. A WebM stream cannot be continued mid-way (later chunks
 * need the first one's header), so a WebM recording goes on as PCM after a reconnect. If the server no longer
 * has the session, a new one starts and is sent what the lost one had not committed. */
"use strict";

(function () {
  const {el, $} = WA;
  const SETTINGS_KEY = "wa_live_settings";
  const OUT_RATE = 16000;
  const MAX_PENDING_SECONDS = 60; // PCM kept while reconnecting; older audio is dropped
  const BACKLOG_CHUNK_SECONDS = 4; // 128 KB chunks when a backlog is sent at once
  const STOP_TIMEOUT_MS = 120000;
  const START_TIMEOUT_MS = 30000;
  // The worklet sits beside this script (both under /static/js/).
  const WORKLET_URL = document.currentScript.src.replace(/live\.js(\?.*)?$/, "pcm-worklet.js");

  const ui = {
    button: $("record-button"),
    label: $("record-label"),
    status: $("live-status"),
    elapsed: $("elapsed"),
    level: $("level-fill"),
    transcript: $("live-transcript"),
    committed: $("live-committed"),
    partial: $("live-partial"),
    model: $("live-model"),
    format: $("live-format"),
    language: $("live-language"),
    task: $("live-task"),
    echo: $("live-echo"),
    noise: $("live-noise"),
    agc: $("live-agc"),
  };
  if (!ui.button) return;

  // -- state ------------------------------------------------------------------------------------------------------
  const segments = []; // committed results: {text, start, end} in seconds since the recording began
  let state = "idle"; // idle | starting | recording | stopping
  let socket = null;
  let capture = null; // {stream, context, node, recorder, format}
  let sessionId = null;
  let sessionOffset = 0; // seconds: where the current server session starts in the whole recording
  let captured = 0; // PCM samples captured so far, counted from the start of the recording (pcm16)
  let unconfirmed = []; // PCM chunks of the current session (pcm16: sent; webm: kept) no committed result covers
  let seq = 0;
  let pending = []; // chunks waiting for recording_started / a reconnect
  let pendingBytes = 0;
  let reconnecting = false;
  let resumeToken = null; // recording_started's resume_token: a reconnect asks to go on with the session
  let receivedUntil = 0; // session seconds: end of the last committed result received
  let startedAt = 0;
  let recordingBase = 0; // seconds: where this recording starts (after earlier ones still on screen)
  let elapsedTimer = null;
  let stopTimer = null;
  let startTimer = null;
  let serverReady = true;
  let sendChain = Promise.resolve(); // keeps MediaRecorder blobs in order while they become ArrayBuffers

  // -- settings ---------------------------------------------------------------------------------------------------
  function loadSettings() {
    let saved = {};
    try {
      saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}") || {};
    } catch (err) {
      console.warn("ignoring unreadable dictation settings", err);
    }
    if (saved.format) ui.format.value = saved.format;
    if (saved.language) ui.language.value = saved.language;
    if (saved.task) ui.task.value = saved.task;
    ui.echo.checked = Boolean(saved.echoCancellation);
    ui.noise.checked = Boolean(saved.noiseSuppression);
    ui.agc.checked = Boolean(saved.autoGainControl);
  }

  function settings() {
    return {
      format: ui.format.value === "webm" ? "webm" : "pcm16",
      language: ui.language.value || "auto",
      task: ui.task.value || "transcribe",
      echoCancellation: ui.echo.checked,
      noiseSuppression: ui.noise.checked,
      autoGainControl: ui.agc.checked,
    };
  }

  function saveSettings() {
    try {
      localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings()));
    } catch (err) {
      console.warn("could not save the dictation settings", err);
    }
  }

  // -- display ----------------------------------------------------------------------------------------------------
  function setStatus(text, kind) {
    ui.status.textContent = text;
    ui.status.className = "status-line" + (kind ? " " + kind : "");
  }

  function setState(next) {
    state = next;
    const busy = next !== "idle";
    ui.button.classList.toggle("recording", next === "recording" || next === "starting");
    ui.button.classList.toggle("stopping", next === "stopping");
    ui.button.setAttribute("aria-pressed", String(busy));
    ui.label.textContent = {idle: "Start recording", starting: "Stop", recording: "Stop",
                            stopping: "Finishing…"}[next];
    ui.button.disabled = next === "stopping" || (next === "idle" && !serverReady);
    for (const input of [ui.format, ui.language, ui.task, ui.echo, ui.noise, ui.agc]) input.disabled = busy;
  }

  function committedText() {
    return WA.joinText(segments.map((s) => s.text));
  }

  function render(partial) {
    ui.committed.textContent = committedText();
    const p = (partial || "").trim();
    ui.partial.textContent = p ? (segments.length ? " " : "") + p : "";
    ui.transcript.classList.toggle("is-empty", !segments.length && !p);
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }

  function showElapsed() {
    const seconds = Math.floor((performance.now() - startedAt) / 1000);
    ui.elapsed.textContent = String(Math.floor(seconds / 60)).padStart(2, "0") + ":" +
      String(seconds % 60).padStart(2, "0");
  }

  function showLevel(rms) {
    // -60 dBFS .. 0 dBFS -> 0 .. 100 %
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
    ui.level.style.width = pct.toFixed(0) + "%";
    ui.level.classList.toggle("hot", db > -6);
  }

  // -- socket -----------------------------------------------------------------------------------------------------
  function connect() {
    if (socket) {
      socket.removeAllListeners();
      socket.disconnect();
    }
    socket = WA.connectSocket();
    socket.on("connect", onConnect);
    socket.on("disconnect", onDisconnect);
    socket.on("connect_error", (err) => {
      const data = err && err.data;
      if (data && data.code) {
        setStatus("Live dictation is refused: " + data.message +
          (data.code === "auth_required" || data.code === "invalid_token" ? " (set an API token below)" : ""),
          "error");
      } else if (state !== "idle") {
        setStatus("Reconnecting… (" + (err && err.message ? err.message : "connection failed") + ")", "warn");
      }
    });
    socket.on("recording_started", onStarted);
    socket.on("transcription_partial", onPartial);
    socket.on("transcription_result", onResult);
    socket.on("recording_stopped", onStopped);
    socket.on("transcription_error", onError);
    socket.on("model_status", () => WA.refreshHealth());
  }

  function onConnect() {
    if (!reconnecting) {
      if (state === "idle" && serverReady) setStatus("Ready.");
      return;
    }
    reconnecting = false;
    if (state === "recording" || state === "starting") {
      setStatus("Reconnected: continuing the recording; the text so far is kept.", "warn");
      restartSession();
    } else if (state === "idle") {
      setStatus("Reconnected.");
    }
  }

  function onDisconnect(reason) {
    if (state === "idle") return;
    reconnecting = true;
    sessionId = null;
    render("");
    if (capture && capture.format === "webm" && state !== "stopping") continueAsPcm(capture);
    if (state === "stopping") {
      // The server saves what it had when the connection went; there is nothing left to wait for.
      finishStop("The connection dropped while finishing; the server saved the text it had received.", "warn");
      return;
    }
    setState("starting");
    setStatus("Connection lost: reconnecting…", "warn");
    // The server closed the connection itself: socket.io does not retry that on its own.
    if (reason === "io server disconnect") socket.connect();
  }

  function emitStart(extra) {
    const s = settings();
    clearTimeout(startTimer);
    startTimer = setTimeout(() => {
      if (state === "starting" && !reconnecting) {
        setStatus("The server did not start the session; stopping.", "error");
        stopCapture();
        setState("idle");
      }
    }, START_TIMEOUT_MS);
    const format = capture ? capture.format : s.format; // webm turns into pcm16 after a reconnect
    socket.emit("start_recording", Object.assign({language: s.language, task: s.task, format, sample_rate: OUT_RATE},
                                                 extra || {}));
  }

  function restartSession() {
    if (resumeToken && capture && capture.format === "pcm16") {
      // The server keeps the session for a while: go on with it. recording_started says what audio it holds.
      pending = unconfirmed.concat(pending);
      pendingBytes = pending.reduce((n, item) => n + item.buffer.byteLength, 0);
      unconfirmed = [];
      setState("starting");
      emitStart({resume: resumeToken, received_until: receivedUntil});
      return;
    }
    if (capture && capture.format === "pcm16") {
      // The lost session never committed this audio: send it again, ahead of what was captured meanwhile.
      pending = unconfirmed.concat(pending);
      pendingBytes = pending.reduce((n, item) => n + item.buffer.byteLength, 0);
      unconfirmed = [];
      sessionOffset = (pending.length ? pending[0].pos : captured) / OUT_RATE;
    } else {
      // WebM that never had a session (the first connection came late): its whole stream, header first, waits
      // in ``pending``. A lost WebM session has already turned into PCM (onDisconnect).
      sessionOffset = recordingBase;
    }
    setState("starting");
    emitStart();
  }

  function onStarted(data) {
    if (state !== "starting") return;
    clearTimeout(startTimer);
    if (data && data.resumed) {
      // Same session: the server has the audio up to audio_seconds; send the rest of what was captured.
      skipPending(Math.round((sessionOffset + Number(data.audio_seconds || 0)) * OUT_RATE));
    } else if (resumeToken) {
      // The server no longer had it (or restarted): a new session, sent what the lost one had not committed.
      sessionOffset = (pending.length ? pending[0].pos : captured) / OUT_RATE;
      receivedUntil = 0;
    }
    resumeToken = (data && data.resume_token) || null;
    sessionId = data && data.session_id;
    setState("recording");
    if (!ui.status.classList.contains("warn")) {
      setStatus("Recording" + (data && data.model ? " with " + data.model : "") + "…", "live");
    }
    if (data && data.model) ui.model.textContent = "model " + data.model;
    flushPending();
  }

  function ours(data) {
    return !data || !data.session_id || !sessionId || data.session_id === sessionId;
  }

  function onPartial(data) {
    if (state === "idle" || !ours(data)) return;
    render(data.text || "");
  }

  function onResult(data) {
    if (!data || !ours(data)) return;
    const text = (data.text || "").trim();
    receivedUntil = Math.max(receivedUntil, Number(data.end || 0));
    if (text) {
      segments.push({text, start: sessionOffset + Number(data.start || 0), end: sessionOffset + Number(data.end || 0)});
    }
    // Audio up to the committed end is safe on the server; only the rest would need resending.
    const safe = (sessionOffset + Number(data.end || 0)) * OUT_RATE;
    unconfirmed = unconfirmed.filter((item) => item.pos + item.samples > safe);
    render("");
    if (state === "recording" && ui.status.classList.contains("warn")) setStatus("Recording…", "live");
  }

  function onStopped(data) {
    if (!ours(data)) return;
    const saved = data && data.history_id ? " Saved to history (#" + data.history_id + ")." : "";
    if (state === "stopping") {
      finishStop("Stopped." + saved);
    } else if (state === "recording") {
      // The server ended the session (time limit, repeated errors): say so and stop the microphone.
      stopCapture();
      const why = ui.status.classList.contains("error") ? ui.status.textContent + " " : "";
      finishStop((why || "The server ended the session. ") + saved, why ? "error" : "warn");
    }
  }

  function onError(data) {
    const message = (data && data.message) || "unknown error";
    const code = (data && data.code) || "error";
    if (state === "starting" && !reconnecting) {
      // The session never started (no model, too many sessions, bad settings): nothing will come.
      clearTimeout(startTimer);
      stopCapture();
      setState("idle");
      setStatus("Could not start: " + message, "error");
      return;
    }
    setStatus("Server: " + message + " (" + code + ")", "error");
  }

  // -- audio ------------------------------------------------------------------------------------------------------
  /** A captured PCM chunk: its place in the recording goes with it, for timestamps and resending. */
  function captureChunk(cap, buffer, samples) {
    const item = {buffer, samples, pos: captured};
    captured += samples;
    if (cap.format === "pcm16") {
      sendChunk(item);
    } else {
      // WebM goes to the server; this PCM copy is what a reconnect would resend.
      unconfirmed.push(item);
      trim(unconfirmed);
    }
  }

  function sendChunk(item) {
    if (state === "recording" && socket && socket.connected && sessionId) {
      socket.emit("audio_chunk", {audio_data: item.buffer, seq: seq++});
      if (capture && capture.format === "pcm16") {
        unconfirmed.push(item);
        trim(unconfirmed);
      }
      return;
    }
    pending.push(item);
    pendingBytes += item.buffer.byteLength;
    if (capture && capture.format === "pcm16") pendingBytes = trim(pending);
  }

  /** Keep at most MAX_PENDING_SECONDS of PCM in ``items`` (oldest dropped); returns the bytes kept. */
  function trim(items) {
    let bytes = items.reduce((n, item) => n + item.buffer.byteLength, 0);
    while (items.length && bytes > MAX_PENDING_SECONDS * OUT_RATE * 2) bytes -= items.shift().buffer.byteLength;
    return bytes;
  }

  function flushPending() {
    const queued = pending;
    pending = [];
    pendingBytes = 0;
    const pcm = capture && capture.format === "pcm16";
    // A backlog of PCM goes out as a few larger chunks: the server limits chunks per second, not bytes.
    for (const item of pcm ? coalesce(queued) : queued) sendChunk(item);
  }

  /** Consecutive PCM chunks joined into chunks of at most BACKLOG_CHUNK_SECONDS. */
  function coalesce(items) {
    const out = [];
    let group = [];
    let samples = 0;
    const close = () => {
      if (!group.length) return;
      const joined = new Uint8Array(samples * 2);
      let at = 0;
      for (const item of group) {
        joined.set(new Uint8Array(item.buffer), at);
        at += item.buffer.byteLength;
      }
      out.push({buffer: joined.buffer, samples, pos: group[0].pos});
      group = [];
      samples = 0;
    };
    for (const item of items) {
      const contiguous = group.length && group[group.length - 1].pos + group[group.length - 1].samples === item.pos;
      if (group.length && (!contiguous || samples + item.samples > BACKLOG_CHUNK_SECONDS * OUT_RATE)) close();
      group.push(item);
      samples += item.samples;
    }
    close();
    return out;
  }

  function dropPending() {
    pending = [];
    pendingBytes = 0;
  }

  /** Drop the pending PCM before recording position ``from`` (samples): the server already has it. */
  function skipPending(from) {
    const kept = [];
    for (const item of pending) {
      if (item.pos + item.samples <= from) continue;
      if (item.pos >= from) {
        kept.push(item);
        continue;
      }
      const skip = from - item.pos;
      kept.push({buffer: item.buffer.slice(skip * 2), samples: item.samples - skip, pos: from});
    }
    pending = kept;
    pendingBytes = kept.reduce((n, item) => n + item.buffer.byteLength, 0);
  }

  async function openMicrophone() {
    const s = settings();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser cannot record audio here (it needs HTTPS and a microphone)");
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: {echoCancellation: s.echoCancellation, noiseSuppression: s.noiseSuppression,
              autoGainControl: s.autoGainControl, channelCount: 1},
    });
    const context = new AudioContext();
    await context.audioWorklet.addModule(WORKLET_URL);
    const source = context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(context, "pcm16-capture", {numberOfInputs: 1, numberOfOutputs: 1,
                                                                  outputChannelCount: [1]});
    const mute = context.createGain();
    mute.gain.value = 0; // the graph must reach the destination to be processed, but nothing is played
    source.connect(node).connect(mute).connect(context.destination);
    if (context.state === "suspended") await context.resume();
    const cap = {stream, context, node, source, mute, recorder: null, format: s.format, flushed: null};
    node.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === "level") showLevel(msg.rms);
      else if (msg.type === "chunk") captureChunk(cap, msg.buffer, msg.samples);
      else if (msg.type === "flushed" && cap.flushed) cap.flushed();
    };
    return cap;
  }

  function webmMimeType() {
    for (const type of ["audio/webm;codecs=opus", "audio/webm"]) {
      if (window.MediaRecorder && MediaRecorder.isTypeSupported(type)) return type;
    }
    throw new Error("this browser cannot record WebM audio; choose the PCM format");
  }

  function startRecorder(cap) {
    const recorder = new MediaRecorder(cap.stream, {mimeType: webmMimeType(), audioBitsPerSecond: 64000});
    recorder.ondataavailable = (event) => {
      if (!event.data || event.data.size === 0 || recorder !== cap.recorder) return;
      sendChain = sendChain.then(() => event.data.arrayBuffer()).then((buffer) => {
        if (recorder === cap.recorder) sendChunk({buffer, samples: 0, pos: 0});
      }).catch((err) => setStatus("Could not read recorded audio: " + err.message, "error"));
    };
    recorder.onerror = (event) => setStatus("Recorder error: " + (event.error ? event.error.message : "unknown"), "error");
    cap.recorder = recorder;
    recorder.start(250);
  }

  /** The WebM session is lost: stop its recorder and go on with the worklet's PCM (kept since the last commit). */
  function continueAsPcm(cap) {
    const old = cap.recorder;
    cap.recorder = null; // its remaining blobs belong to the lost session
    if (old && old.state !== "inactive") old.stop();
    cap.format = "pcm16";
    dropPending(); // WebM blobs that never reached a session; their audio is in ``unconfirmed``
  }

  /** Everything captured so far has been handed to sendChunk (in order). */
  async function drainCapture(cap) {
    if (cap.format === "pcm16") {
      await new Promise((resolve) => {
        cap.flushed = resolve;
        cap.node.port.postMessage({type: "flush"});
        setTimeout(resolve, 1000); // the worklet always answers; this only guards a dead audio thread
      });
    } else if (cap.recorder && cap.recorder.state !== "inactive") {
      const recorder = cap.recorder;
      await new Promise((resolve) => {
        recorder.addEventListener("stop", resolve, {once: true});
        recorder.stop();
      });
      await sendChain;
    }
  }

  function stopCapture() {
    clearInterval(elapsedTimer);
    elapsedTimer = null;
    const cap = capture;
    capture = null;
    if (!cap) return;
    if (cap.recorder && cap.recorder.state !== "inactive") {
      cap.recorder.ondataavailable = null;
      cap.recorder.stop();
    }
    for (const track of cap.stream.getTracks()) track.stop();
    cap.node.port.onmessage = null;
    cap.source.disconnect();
    cap.node.disconnect();
    cap.context.close().catch((err) => console.warn("closing the audio context failed", err));
    showLevel(0);
  }

  // -- start / stop -----------------------------------------------------------------------------------------------
  async function start() {
    saveSettings();
    setState("starting");
    setStatus("Opening the microphone…");
    seq = 0;
    unconfirmed = [];
    sessionId = null;
    resumeToken = null;
    receivedUntil = 0;
    dropPending();
    // A new recording continues the text on screen; its timestamps follow the previous one's.
    const previousEnd = segments.length ? segments[segments.length - 1].end : 0;
    recordingBase = previousEnd;
    sessionOffset = previousEnd;
    captured = Math.round(previousEnd * OUT_RATE);
    try {
      capture = await openMicrophone();
      if (capture.format === "webm") startRecorder(capture);
    } catch (err) {
      stopCapture();
      setState("idle");
      setStatus("Microphone unavailable: " + (err.message || err.name || err), "error");
      return;
    }
    startedAt = performance.now();
    showElapsed();
    elapsedTimer = setInterval(showElapsed, 250);
    if (!socket.connected) {
      reconnecting = true;
      setStatus("Connecting to the server…", "warn");
      socket.connect();
      return;
    }
    setStatus("Starting…");
    emitStart();
  }

  async function stop() {
    if (state === "starting" && (reconnecting || !sessionId)) {
      // Nothing reached a server session (or the connection is down): just end locally.
      stopCapture();
      dropPending();
      if (socket.connected && !reconnecting) socket.emit("stop_recording");
      setState("idle");
      setStatus(reconnecting ? "Stopped while disconnected; the server saved what it had received." : "Stopped.");
      reconnecting = false;
      return;
    }
    setState("stopping");
    setStatus("Finishing the last words…");
    const cap = capture;
    if (cap) await drainCapture(cap);
    stopCapture();
    if (!socket.connected) {
      finishStop("Stopped while disconnected; the server saved what it had received.", "warn");
      return;
    }
    socket.emit("stop_recording");
    stopTimer = setTimeout(() => {
      if (state === "stopping") finishStop("The server did not confirm the end of the recording.", "error");
    }, STOP_TIMEOUT_MS);
  }

  function finishStop(message, kind) {
    clearTimeout(stopTimer);
    stopCapture();
    dropPending();
    sessionId = null;
    resumeToken = null;
    setState("idle");
    render("");
    setStatus(message, kind);
  }

  // -- toolbar ----------------------------------------------------------------------------------------------------
  function fileStem() {
    const d = new Date();
    const pad = (n) => String(n).padStart(2, "0");
    return "dictation-" + d.getFullYear() + pad(d.getMonth() + 1) + pad(d.getDate()) + "-" + pad(d.getHours()) +
      pad(d.getMinutes());
  }

  for (const id of ["live-download-txt", "live-download-srt", "live-download-vtt"]) {
    $(id).addEventListener("click", (event) => {
      const format = event.currentTarget.dataset.format;
      if (!segments.length) {
        setStatus("Nothing to download yet.", "warn");
        return;
      }
      WA.download(fileStem() + "." + format, WA.renderTranscript(segments, format), format);
    });
  }

  $("live-copy").addEventListener("click", async () => {
    try {
      await WA.copyText(committedText());
      setStatus("Copied to the clipboard.");
    } catch (err) {
      setStatus("Could not copy: " + err.message, "error");
    }
  });

  $("live-clear").addEventListener("click", () => {
    segments.length = 0;
    render("");
    if (state === "idle") {
      ui.elapsed.textContent = "00:00";
      setStatus("Cleared.");
    }
  });

  ui.button.addEventListener("click", () => {
    if (state === "idle") start();
    else if (state === "recording" || state === "starting") stop();
  });

  for (const input of [ui.format, ui.language, ui.task, ui.echo, ui.noise, ui.agc]) {
    input.addEventListener("change", saveSettings);
  }

  const tokenInput = $("api-token");
  if (tokenInput) {
    tokenInput.value = WA.apiToken();
    $("api-token-save").addEventListener("click", () => {
      WA.setApiToken(tokenInput.value.trim());
      setStatus(tokenInput.value.trim() ? "API token saved." : "API token removed.");
      if (state === "idle") connect();
    });
  }

  WA.onHealth((body, httpStatus) => {
    serverReady = httpStatus === 200;
    if (state === "idle") {
      ui.button.disabled = !serverReady;
      ui.button.title = serverReady ? "" : "Transcription is unavailable: " + ((body && body.reason) || "not ready");
    }
    if (body && body.model && body.model.name) ui.model.textContent = "model " + body.model.name;
  });

  // Read-only handle for debugging from the console (and for the browser tests, which drop the connection).
  WA.live = {
    get state() { return state; },
    get socket() { return socket; },
    get sessionId() { return sessionId; },
    get format() { return capture ? capture.format : null; },
    get resumeToken() { return resumeToken; },
    get segments() { return segments.map((s) => Object.assign({}, s)); },
  };

  loadSettings();
  setState("idle");
  render("");
  connect();
})();
