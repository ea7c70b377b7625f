/* File transcription on the main page: choose or drop a file, POST /transcribe (short files) or POST /api/jobs
 * (long files: progress from Socket.IO job_progress after join_job, with GET /api/jobs/<id> polling as the
 * fallback), then show the text and offer txt/srt/vtt/json downloads built from the JSON result. */
"use strict";

(function () {
  const {$} = WA;
  const JOB_THRESHOLD_BYTES = 8 * 1024 * 1024; // "automatic": larger files go to the job queue
  const POLL_MS = 2000;

  const form = $("upload-form");
  if (!form) return;
  const fileInput = $("upload-file");
  const dropzone = $("dropzone");
  const dropText = $("dropzone-text");
  const status = $("upload-status");
  const submit = $("upload-submit");
  const progress = $("upload-progress");
  const progressFill = $("upload-progress-fill");
  const resultBox = $("upload-result");
  const resultText = $("upload-result-text");
  const resultMeta = $("upload-result-meta");
  const view = $("upload-view");

  let droppedFile = null;
  let result = null; // the last JSON result
  let resultName = "transcript";

  function setStatus(text, kind) {
    status.textContent = text;
    status.className = "status-line" + (kind ? " " + kind : "");
  }

  function setProgress(fraction) {
    if (fraction === null) {
      progress.hidden = true;
      return;
    }
    progress.hidden = false;
    progressFill.style.width = Math.round(Math.max(0, Math.min(1, fraction)) * 100) + "%";
  }

  function chosenFile() {
    return droppedFile || (fileInput.files && fileInput.files[0]) || null;
  }

  function showChosen() {
    const file = chosenFile();
    dropText.textContent = file ? file.name + " (" + WA.formatBytes(file.size) + ")"
      : "Drop an audio or video file here, or choose one";
    dropzone.classList.toggle("has-file", Boolean(file));
  }

  fileInput.addEventListener("change", () => {
    droppedFile = null;
    showChosen();
  });
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    dropzone.addEventListener(name, () => dropzone.classList.remove("dragging"));
  }
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) {
      droppedFile = file;
      showChosen();
    }
  });

  function formData(file) {
    const data = new FormData();
    data.append("audio", file, file.name);
    data.append("language", $("upload-language").value);
    data.append("task", $("upload-task").value);
    data.append("word_timestamps", $("upload-words").checked ? "true" : "false");
    data.append("vad_filter", $("upload-vad").checked ? "true" : "false");
    data.append("output", "json");
    return data;
  }

  function segmentsOf(res) {
    const segments = (res && res.segments) || [];
    if (segments.length) return segments;
    return [{start: 0, end: (res && res.duration) || 0, text: (res && res.text) || ""}];
  }

  function showResult() {
    if (!result) return;
    const format = view.value;
    resultText.textContent = format === "txt" ? (result.text || "").trim()
      : WA.renderTranscript(segmentsOf(result), format);
    const parts = [];
    if (result.language) parts.push("language " + result.language);
    if (result.duration !== undefined) parts.push(WA.formatDuration(result.duration) + " of audio");
    if (result.processing_seconds !== undefined) parts.push("processed in " + result.processing_seconds + " s");
    if (result.model) parts.push("model " + result.model);
    if (result.cached) parts.push("from the result cache");
    if (result.history_id) parts.push("history #" + result.history_id);
    resultMeta.textContent = parts.join(" · ");
    resultBox.hidden = false;
  }

  view.addEventListener("change", showResult);

  resultBox.addEventListener("click", (event) => {
    const format = event.target.dataset && event.target.dataset.download;
    if (!format || !result) return;
    const stem = resultName.replace(/\.[^.]*$/, "") || "transcript";
    const body = format === "json" ? JSON.stringify(result, null, 2) + "\n"
      : WA.renderTranscript(segmentsOf(result), format);
    WA.download(stem + "." + format, body, format);
  });

  $("upload-copy").addEventListener("click", async () => {
    try {
      await WA.copyText(resultText.textContent);
      setStatus("Copied to the clipboard.");
    } catch (err) {
      setStatus("Could not copy: " + err.message, "error");
    }
  });

  // -- jobs ---------------------------------------------------------------------------------------------------
  function describeJob(job) {
    if (job.status === "queued") {
      return "Queued" + (job.queue_position ? " (position " + job.queue_position + ")" : "") + "…";
    }
    if (job.status === "processing") {
      const eta = job.eta_seconds ? ", about " + Math.ceil(job.eta_seconds) + " s left" : "";
      return "Transcribing… " + Math.round((job.progress || 0) * 100) + "%" + eta;
    }
    return job.status;
  }

  function waitForJob(jobId) {
    return new Promise((resolve, reject) => {
      let done = false;
      let socket = null;
      let timer = null;
      const finish = (job) => {
        if (done) return;
        if (job.status === "completed") resolve(job);
        else if (job.status === "failed" || job.status === "cancelled") {
          reject(new Error((job.error && job.error.message) || "the job " + job.status));
        } else {
          setProgress(job.progress || 0);
          setStatus(describeJob(job));
          return;
        }
        done = true;
        clearInterval(timer);
        if (socket) socket.disconnect();
      };
      // Socket.IO pushes progress; polling is the fallback (and covers an event missed while connecting).
      try {
        socket = WA.connectSocket({reconnectionAttempts: 5});
        socket.on("connect", () => socket.emit("join_job", {job_id: jobId}));
        socket.on("job_progress", (job) => {
          if (job && job.job_id === jobId) finish(job);
        });
      } catch (err) {
        console.warn("no Socket.IO progress; polling instead", err);
      }
      const poll = async () => {
        try {
          finish(await WA.api("/api/jobs/" + encodeURIComponent(jobId)));
        } catch (err) {
          done = true;
          clearInterval(timer);
          if (socket) socket.disconnect();
          reject(err);
        }
      };
      timer = setInterval(poll, POLL_MS);
      poll();
    });
  }

  async function runJob(file) {
    const accepted = await WA.api("/api/jobs", {method: "POST", body: formData(file)});
    setStatus("Queued…");
    setProgress(0);
    await waitForJob(accepted.job_id);
    setProgress(1);
    return WA.api("/api/jobs/" + encodeURIComponent(accepted.job_id) + "/result?format=json");
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = chosenFile();
    if (!file) {
      setStatus("Choose an audio file first.", "warn");
      return;
    }
    const mode = $("upload-mode").value;
    const asJob = mode === "job" || (mode === "auto" && file.size > JOB_THRESHOLD_BYTES);
    submit.disabled = true;
    resultBox.hidden = true;
    setProgress(asJob ? 0 : null);
    setStatus(asJob ? "Uploading…" : "Uploading and transcribing…");
    try {
      result = asJob ? await runJob(file) : await WA.api("/transcribe", {method: "POST", body: formData(file)});
      resultName = file.name;
      showResult();
      setStatus("Done.");
    } catch (err) {
      setStatus("Failed: " + err.message, "error");
    } finally {
      submit.disabled = false;
      setTimeout(() => setProgress(null), 1500);
    }
  });

  WA.loadSession(); // a login's cookie makes uploads need the CSRF token
})();
