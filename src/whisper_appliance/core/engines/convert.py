"""Turn a CTranslate2 Whisper model directory into an openai-whisper checkpoint, so both engines run offline
from the same weights.

``read_ct2_variables`` parses ``model.bin`` directly (the format written by CTranslate2's
``ModelSpec._serialize``: binary version, spec name, spec revision, the variables as name/shape/dtype/bytes,
then aliases). ``ct2_to_openai`` maps those variables onto openai-whisper's parameter names and derives the
model dimensions; ``convert_ct2_dir`` writes ``{"dims", "model_state_dict", "alignment_heads"}`` with
``torch.save``, atomically. Parsing needs only numpy; torch is imported only when a checkpoint is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

log = logging.getLogger(__name__)

# CTranslate2's dtype ids, in the order of model_spec._dtype_to_type_id. bfloat16 is read as raw uint16 bits.
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")
_SUPPORTED_SPECS = ("WhisperSpec",)


class ConversionError(ValueError):
    """model.bin is not a CTranslate2 Whisper model this converter understands."""


@dataclass(frozen=True)
class Ct2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # aliases resolved: an alias points at the same array


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ConversionError("model.bin is truncated")
    return struct.unpack("<" + fmt, data)[0]


def _read_string(f: BinaryIO) -> str:
    length = _read(f, "H")
    raw = f.read(length)
    if len(raw) != length:
        raise ConversionError("model.bin is truncated")
    return raw[:-1].decode("utf-8")  # written with a trailing NUL


def _to_array(raw: bytes, dtype_id: int, shape: tuple[int, ...]) -> np.ndarray:
    if dtype_id >= len(_DTYPES):
        raise ConversionError(f"unknown dtype id {dtype_id} in model.bin")
    dtype = _DTYPES[dtype_id]
    if dtype == "bfloat16":
        # bfloat16 is the top half of a float32: shift the bits into place.
        bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def read_ct2_variables(model_bin: Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 5 or 6) into numpy arrays."""
    with open(model_bin, "rb") as f:
        version = _read(f, "I")
        if version < 5:
            raise ConversionError(f"CTranslate2 binary version {version} is too old (need 5 or later)")
        spec = _read_string(f)
        revision = _read(f, "I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(_read(f, "I")):
            name = _read_string(f)
            shape = tuple(_read(f, "I") for _ in range(_read(f, "B")))
            dtype_id = _read(f, "B")
            num_bytes = _read(f, "I")
            raw = f.read(num_bytes)
            if len(raw) != num_bytes:
                raise ConversionError(f"model.bin is truncated inside variable {name!r}")
            variables[name] = _to_array(raw, dtype_id, shape)
        for _ in range(_read(f, "I")):
            alias, target = _read_string(f), _read_string(f)
            variables[alias] = variables[target]
    return Ct2Model(spec=spec, revision=revision, variables=variables)


def _scalar(variables: dict[str, np.ndarray], name: str) -> int | None:
    value = variables.get(name)
    return None if value is None else int(np.asarray(value).reshape(()))


def _float32(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A weight as float32; int8-quantised weights are de-quantised with their stored per-row scale."""
    value = variables[name]
    if value.dtype == np.int8:
        scale = variables.get(name + "_scale")
        if scale is None:
            raise ConversionError(f"{name} is int8 but has no {name}_scale")
        return value.astype(np.float32) / scale.astype(np.float32).reshape(-1, *([1] * (value.ndim - 1)))
    return np.ascontiguousarray(value, dtype=np.float32)


def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if not indices or indices != set(range(len(indices))):
        raise ConversionError(f"no contiguous {stack} layers in model.bin")
    return len(indices)


def ct2_to_openai(model: Ct2Model) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Map CTranslate2 Whisper variables onto openai-whisper names. Returns (dims, float32 state dict)."""
    if model.spec not in _SUPPORTED_SPECS:
        raise ConversionError(f"model.bin holds a {model.spec}, not a Whisper model")
    v = model.variables
    w = lambda name: _float32(v, name)  # noqa: E731 - a short alias keeps the mapping table readable
    state: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str, *, bias: bool = True) -> None:
        state[f"{dst}.weight"] = w(f"{src}/weight")
        if bias:
            state[f"{dst}.bias"] = w(f"{src}/bias")

    def layer_norm(dst: str, src: str) -> None:
        state[f"{dst}.weight"] = w(f"{src}/gamma")
        state[f"{dst}.bias"] = w(f"{src}/beta")

    def fused_self_attention(dst: str, src: str) -> None:
        # q, k and v are stacked row-wise in linear_0; Whisper's key projection has no bias (CT2 stores zeros).
        qkv_w, qkv_b = w(f"{src}/linear_0/weight"), w(f"{src}/linear_0/bias")
        for i, part in enumerate(("query", "key", "value")):
            rows = slice(i * qkv_w.shape[0] // 3, (i + 1) * qkv_w.shape[0] // 3)
            state[f"{dst}.{part}.weight"] = qkv_w[rows]
            if part != "key":
                state[f"{dst}.{part}.bias"] = qkv_b[rows]
        linear(f"{dst}.out", f"{src}/linear_1")

    def mlp(dst: str, src: str) -> None:
        layer_norm(f"{dst}.mlp_ln", f"{src}/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/linear_1")

    n_audio_layer = _count_layers(v, "encoder")
    n_text_layer = _count_layers(v, "decoder")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    state["encoder.positional_embedding"] = w("encoder/position_encodings/encodings")
    for i in range(n_audio_layer):
        dst, src = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        fused_self_attention(f"{dst}.attn", f"{src}/self_attention")
        mlp(dst, f"{src}/ffn")
    layer_norm("encoder.ln_post", "encoder/layer_norm")

    state["decoder.token_embedding.weight"] = w("decoder/embeddings/weight")
    state["decoder.positional_embedding"] = w("decoder/position_encodings/encodings")
    for i in range(n_text_layer):
        dst, src = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        fused_self_attention(f"{dst}.attn", f"{src}/self_attention")
        # Cross-attention: linear_0 is the query, linear_1 holds key and value stacked, linear_2 the output.
        layer_norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        kv_w, kv_b = w(f"{src}/attention/linear_1/weight"), w(f"{src}/attention/linear_1/bias")
        half = kv_w.shape[0] // 2
        state[f"{dst}.cross_attn.key.weight"] = kv_w[:half]
        state[f"{dst}.cross_attn.value.weight"] = kv_w[half:]
        state[f"{dst}.cross_attn.value.bias"] = kv_b[half:]
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        mlp(dst, f"{src}/ffn")
    layer_norm("decoder.ln", "decoder/layer_norm")
    # The output projection is tied to the token embedding in Whisper (CT2 writes it as an alias), so nothing
    # else to copy.

    conv1 = state["encoder.conv1.weight"]
    embedding = state["decoder.token_embedding.weight"]
    n_audio_state, n_text_state = conv1.shape[0], embedding.shape[1]
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_vocab": int(embedding.shape[0]),
        "n_audio_ctx": int(state["encoder.positional_embedding"].shape[0]),
        "n_audio_state": int(n_audio_state),
        # Heads are stored by current CTranslate2 versions; Whisper's heads are 64 wide otherwise.
        "n_audio_head": _scalar(v, "encoder/num_heads") or n_audio_state // 64,
        "n_audio_layer": n_audio_layer,
        "n_text_ctx": int(state["decoder.positional_embedding"].shape[0]),
        "n_text_state": int(n_text_state),
        "n_text_head": _scalar(v, "decoder/num_heads") or n_text_state // 64,
        "n_text_layer": n_text_layer,
    }
    return dims, state


def read_alignment_heads(model_dir: Path) -> list[list[int]]:
    """``alignment_heads`` ([layer, head] pairs) from the CTranslate2 config.json; empty when absent."""
    config = model_dir / "config.json"
    if not config.is_file():
        return []
    heads = json.loads(config.read_text()).get("alignment_heads") or []
    return [[int(layer), int(head)] for layer, head in heads]


def convert_ct2_dir(model_dir: Path, dest: Path) -> Path:
    """Convert ``model_dir`` (CTranslate2) into an openai-whisper checkpoint at ``dest``, written atomically."""
    import torch

    model_dir, dest = Path(model_dir), Path(dest)
    log.info("converting CTranslate2 model %s to an openai-whisper checkpoint %s", model_dir, dest)
    dims, state = ct2_to_openai(read_ct2_variables(model_dir / "model.bin"))
    checkpoint = {
        "dims": dims,
        "model_state_dict": {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in state.items()},
        "alignment_heads": read_alignment_heads(model_dir),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
