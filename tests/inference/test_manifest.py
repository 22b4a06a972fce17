"""The manifest pure core: parsing and digest verification (no model files needed)."""

from __future__ import annotations

import hashlib
import json

import pytest

from kestrel.errors import DataError
from kestrel.inference.manifest import (
    ManifestError,
    ModelHashError,
    encode_manifest,
    parse_manifest,
    verify_digests,
)

DIGEST = hashlib.sha256(b"model bytes").hexdigest()


def manifest_obj(**over):
    obj = {
        "format": "kestrel.model/1",
        "name": "toy",
        "version": "1.0.0",
        "runtime": "onnx",
        "task": "anomaly",
        "model_file": "model.onnx",
        "files": {"model.onnx": {"sha256": DIGEST, "size": 11}},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [None]}],
        "license": "Apache-2.0",
    }
    obj.update(over)
    return obj


def test_parse_roundtrip_keeps_fields_and_digest():
    data = encode_manifest(manifest_obj(quantization={"weight_type": "int8"}))
    m = parse_manifest(data)
    assert m.name == "toy" and m.runtime == "onnx"
    assert m.inputs[0].shape == (None, 4)
    assert m.quantization == {"weight_type": "int8"}
    assert m.digest == hashlib.sha256(data).hexdigest()
    assert m.file("model.onnx").sha256 == DIGEST


@pytest.mark.parametrize(
    "change, words",
    [
        ({"format": "other/1"}, "unsupported format"),
        ({"runtime": "pytorch"}, "unknown runtime"),
        ({"name": "../etc"}, "bad model name"),
        ({"model_file": "missing.onnx"}, "not listed in files"),
        ({"files": {"../x": {"sha256": DIGEST, "size": 1}}}, "plain names"),
        ({"files": {"model.onnx": {"sha256": "abc", "size": 1}}}, "64 lowercase hex"),
        ({"inputs": [{"name": "x", "dtype": "complex", "shape": [1]}]}, "unknown dtype"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": [-3]}]}, "bad dimension"),
        ({"inputs": []}, "inputs is empty"),
        ({"outputs": [{"name": "y", "dtype": "float32", "shape": [1]}] * 2}, "duplicate"),
        ({"preprocessing": {"tokenizer": "tok.json"}}, "tokenizer"),
        ({"license": 3}, "wrong type"),
    ],
)
def test_malformed_manifests_are_refused_with_a_reason(change, words):
    with pytest.raises(ManifestError) as info:
        parse_manifest(encode_manifest(manifest_obj(**change)), source="m.json")
    assert words in str(info.value)
    assert "m.json" in str(info.value)


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[1, 2]", b"{", json.dumps({"format": 1}).encode()])
def test_garbage_is_a_data_error(data):
    with pytest.raises(DataError):
        parse_manifest(data)


def test_verify_digests_accepts_match_and_refuses_mismatch_or_missing():
    m = parse_manifest(encode_manifest(manifest_obj()))
    assert verify_digests(m, {"model.onnx": (DIGEST, 11)}).manifest is m
    with pytest.raises(ModelHashError, match="does not match"):
        verify_digests(m, {"model.onnx": (hashlib.sha256(b"other").hexdigest(), 11)})
    with pytest.raises(ModelHashError, match="does not match"):
        verify_digests(m, {"model.onnx": (DIGEST, 12)})
    with pytest.raises(ModelHashError, match="missing"):
        verify_digests(m, {})
