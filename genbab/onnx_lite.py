"""ONNX models read without the ``onnx`` package: a private schema of the fields we use.

Importing ``onnx`` costs most of a second (``ml_dtypes``); the quick stage
only needs a model's nodes, initialisers, inputs and outputs.  This module
declares those messages of ``onnx.proto`` (same field numbers and types; a
test compares them with onnx's own descriptors) in a private protobuf pool,
so the real protobuf parser reads the file, fields we do not declare are kept
as unknown fields, and nothing clashes with ``onnx`` when it is imported too.

``parse_model(data)`` returns a message with the attribute names of
``onnx.ModelProto`` (``graph.node``, ``graph.initializer``, ...);
``tensor_to_array`` turns a ``TensorProto`` into numpy.
"""
from __future__ import annotations

import functools

import numpy as np

_PACKAGE = "genbab_onnx_lite"
# (name, number, type, repeated, message type); types as in descriptor.proto
_F = {"int64": 3, "int32": 5, "float": 2, "double": 1, "uint64": 4, "string": 9, "bytes": 12,
      "message": 11}
_MESSAGES: dict[str, list[tuple[str, int, str, bool, str]]] = {
    "ModelProto": [("ir_version", 1, "int64", False, ""),
                   ("opset_import", 8, "message", True, "OperatorSetIdProto"),
                   ("graph", 7, "message", False, "GraphProto"),
                   ("functions", 25, "bytes", True, "")],
    "OperatorSetIdProto": [("domain", 1, "string", False, ""), ("version", 2, "int64", False, "")],
    "GraphProto": [("node", 1, "message", True, "NodeProto"), ("name", 2, "string", False, ""),
                   ("initializer", 5, "message", True, "TensorProto"),
                   ("sparse_initializer", 15, "bytes", True, ""),
                   ("input", 11, "message", True, "ValueInfoProto"),
                   ("output", 12, "message", True, "ValueInfoProto")],
    "NodeProto": [("input", 1, "string", True, ""), ("output", 2, "string", True, ""),
                  ("name", 3, "string", False, ""), ("op_type", 4, "string", False, ""),
                  ("domain", 7, "string", False, ""),
                  ("attribute", 5, "message", True, "AttributeProto")],
    "AttributeProto": [("name", 1, "string", False, ""), ("ref_attr_name", 21, "string", False, ""),
                       ("type", 20, "int32", False, ""), ("f", 2, "float", False, ""),
                       ("i", 3, "int64", False, ""), ("s", 4, "bytes", False, ""),
                       ("t", 5, "message", False, "TensorProto"), ("g", 6, "bytes", False, ""),
                       ("floats", 7, "float", True, ""), ("ints", 8, "int64", True, ""),
                       ("strings", 9, "bytes", True, "")],
    "TensorProto": [("dims", 1, "int64", True, ""), ("data_type", 2, "int32", False, ""),
                    ("segment", 3, "bytes", False, ""), ("float_data", 4, "float", True, ""),
                    ("int32_data", 5, "int32", True, ""), ("string_data", 6, "bytes", True, ""),
                    ("int64_data", 7, "int64", True, ""), ("name", 8, "string", False, ""),
                    ("raw_data", 9, "bytes", False, ""), ("external_data", 13, "bytes", True, ""),
                    ("data_location", 14, "int32", False, ""),
                    ("double_data", 10, "double", True, ""),
                    ("uint64_data", 11, "uint64", True, "")],
    "ValueInfoProto": [("name", 1, "string", False, ""),
                       ("type", 2, "message", False, "TypeProto")],
    "TypeProto": [("tensor_type", 1, "message", False, "TensorTypeProto")],
    "TensorTypeProto": [("elem_type", 1, "int32", False, ""),
                        ("shape", 2, "message", False, "TensorShapeProto")],
    "TensorShapeProto": [("dim", 1, "message", True, "Dimension")],
    "Dimension": [("dim_value", 1, "int64", False, ""), ("dim_param", 2, "string", False, "")],
}
# onnx names of the two nested messages declared flat above
ONNX_NAMES = {"TensorTypeProto": "TypeProto.Tensor", "Dimension": "TensorShapeProto.Dimension"}

FLOAT, INT32, INT64, DOUBLE = 1, 6, 7, 11  # TensorProto.DataType values we read
_RAW_DTYPES = {FLOAT: "<f4", INT32: "<i4", INT64: "<i8", DOUBLE: "<f8"}
_FIELD_OF = {FLOAT: "float_data", INT32: "int32_data", INT64: "int64_data",
             DOUBLE: "double_data"}
NP_DTYPES = {FLOAT: np.dtype(np.float32), DOUBLE: np.dtype(np.float64)}


class LiteError(ValueError):
    """Bytes that are not a model this reader handles (the caller falls back to onnx)."""


@functools.cache
def _model_class():
    """The ModelProto class of the private schema (built once per process)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="genbab_onnx_lite.proto", package=_PACKAGE,
                                              syntax="proto2")
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, repeated, type_name in fields:
            entry = message.field.add(name=field, number=number, type=_F[kind],
                                      label=3 if repeated else 1)
            if type_name:
                entry.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName(f"{_PACKAGE}.ModelProto")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)  # protobuf < 4.21


def schema() -> dict[str, list[tuple[str, int, str, bool, str]]]:
    """The declared messages: name -> (field, number, type, repeated, message type)."""
    return {name: list(fields) for name, fields in _MESSAGES.items()}


def parse_model(data: bytes):
    """Parse serialised ``ModelProto`` bytes; ``LiteError`` if protobuf rejects them."""
    from google.protobuf.message import DecodeError

    model = _model_class()()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise LiteError(f"not a valid ONNX model ({type(exc).__name__})") from None
    return model


def tensor_to_array(tensor) -> np.ndarray:
    """A ``TensorProto`` of float, double, int32 or int64 as numpy (``LiteError`` otherwise)."""
    kind = tensor.data_type
    if kind not in _RAW_DTYPES:
        raise LiteError(f"tensor '{tensor.name}': element type {kind} not read here")
    if tensor.data_location != 0 or len(tensor.external_data) or tensor.HasField("segment"):
        raise LiteError(f"tensor '{tensor.name}': external or segmented data")
    shape = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in shape):
        raise LiteError(f"tensor '{tensor.name}': negative dimension")
    if tensor.HasField("raw_data"):
        values = np.frombuffer(tensor.raw_data, dtype=_RAW_DTYPES[kind])
    else:
        values = np.asarray(getattr(tensor, _FIELD_OF[kind]), dtype=_RAW_DTYPES[kind])
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise LiteError(f"tensor '{tensor.name}': {values.size} values for shape {shape}")
    return values.astype(_RAW_DTYPES[kind][1:]).reshape(shape)
