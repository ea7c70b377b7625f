"""Whisper Appliance: a self-hosted speech-to-text server (Flask-SocketIO, faster-whisper / openai-whisper)."""

__version__ = "0.1.0"
