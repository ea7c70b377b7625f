"""Live dictation over Socket.IO (default namespace): thin handlers around ``services/live.py``.

Client events: ``start_recording {language?, task?, format: "webm"|"pcm16", sample_rate?, resume?,
received_until?}``,
``audio_chunk {audio_data: binary|base64, seq?}``, ``stop_recording``. Server events: ``recording_started``,
``transcription_partial``, ``transcription_result``, ``transcription_error {code, message}``,
``recording_stopped`` (see the service's docstring). A second ``start_recording`` while recording is refused
with ``transcription_error`` code ``already_recording``; the running session goes on.

``audio_chunk`` without ``start_recording`` and without ``seq`` is the seed page's message: one whole
recording, answered with one ``transcription_result``. Connection checks (origin, the principal, REQUIRE_AUTH) are
app.py's ``connect`` handler; this class deliberately defines no ``on_connect``. A session is saved to the history
of the principal the connection was opened with.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, request
from flask_socketio import Namespace, SocketIO

from ..core.errors import ApplianceError, Forbidden, error_reference, internal_error
from ..http import socket_principal
from ..services.live import LiveSessions, client_key, parse_live_params

log = logging.getLogger(__name__)


class LiveSpeech(Namespace):
    def __init__(self, socketio: SocketIO, live: LiveSessions, namespace: str = "/") -> None:
        super().__init__(namespace)
        self.live = live
        self._socketio = socketio

    # -- helpers -----------------------------------------------------------------------------------------------
    def _send_error(self, sid: str, err: ApplianceError) -> None:
        self._socketio.emit("transcription_error", {"code": err.code, "message": err.message}, to=sid,
                            namespace=self.namespace)

    def _guarded(self, sid: str, action: Any, *args: Any) -> Any:
        """Run a handler body; every failure becomes a transcription_error to that client only."""
        try:
            return action(*args)
        except ApplianceError as err:
            log.info("live %s: %s (%s)", sid[:8], err.message, err.code)
            self._send_error(sid, err)
        except Exception:
            ref = error_reference()
            log.exception("live handler failed for %s (error id %s)", sid[:8], ref)
            self._send_error(sid, internal_error(ref))
        return None

    # -- events ------------------------------------------------------------------------------------------------
    def on_start_recording(self, data: Any = None) -> None:
        sid = request.sid
        self._guarded(sid, self._start, sid, data)

    def _start(self, sid: str, data: Any) -> None:
        socketio = self._socketio

        def emit(name: str, payload: dict[str, Any]) -> None:
            socketio.emit(name, payload, to=sid, namespace=self.namespace)

        params = parse_live_params(data)
        principal = socket_principal()
        session = self.live.open(sid, params, principal, emit, client=client_key(principal, request.remote_addr))
        emit("recording_started", session.started_payload())
        if session.resumed:  # its loop runs on; the client gets the results it missed
            session.replay(params.received_until)
            return
        # The loop emits from this background task: it is on the event loop, unlike the inference thread.
        socketio.start_background_task(session.run, emit, socketio.sleep)

    def on_audio_chunk(self, data: Any = None) -> None:
        sid = request.sid
        self._guarded(sid, self._chunk, sid, data)

    def _chunk(self, sid: str, data: Any) -> None:
        chunk = self.live.admit_chunk(sid, data)
        session = self.live.get(sid)
        if session is not None:
            session.feed(chunk.data)
            return
        if not self.live.is_legacy(sid, chunk):
            raise ApplianceError("no recording is running on this connection; send start_recording first",
                                 code="not_recording", status=400)
        principal = socket_principal()
        result = self.live.transcribe_recording(chunk, principal, client=client_key(principal, request.remote_addr))
        self._socketio.emit("transcription_result", {
            "session_id": None, "text": result.transcript.text, "start": 0.0,
            "end": round(result.transcript.duration, 3), "final": True, "language": result.transcript.language,
            "history_id": result.history_id}, to=sid, namespace=self.namespace)

    def on_stop_recording(self, data: Any = None) -> None:
        sid = request.sid
        self._guarded(sid, self.live.stop, sid)

    def on_transcription_result(self, data: Any = None) -> None:
        """Results come from the server only; a client sending one is told so and nothing is stored."""
        sid = request.sid
        log.warning("client %s sent a transcription_result; ignored", sid[:8])
        self._send_error(sid, Forbidden("transcription results are produced by the server; nothing was stored",
                                        code="not_allowed"))

    def on_disconnect(self, reason: Any = None) -> None:
        sid = request.sid
        try:
            summary = self.live.close(sid, save=True)
        except Exception:
            log.exception("closing the live session of %s failed", sid[:8])
            return
        if summary is not None:
            log.info("client %s disconnected during live session %s (saved as history %s)", sid[:8],
                     summary.session_id, summary.history_id)


def init_app(app: Flask, socketio: SocketIO) -> None:
    socketio.on_namespace(LiveSpeech(socketio, app.extensions["appliance"].live))
