"""Core: engines, audio decoding, output formats, streaming policy, TLS. Imports no Flask and no Socket.IO."""
