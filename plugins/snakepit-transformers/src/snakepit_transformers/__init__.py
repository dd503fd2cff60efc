"""Tensors, BatchEncoding and model outputs across the snakepit wire (numpy arrays
travel with snakepit itself).

Loaded by workers (without pluggy) and by the host through the
``snakepit.serializers`` entry point; torch and transformers are imported only when a
value needs them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# numpy arrays are snakepit's own (snakepit.bridge.arrays); listed here too so that
# arrays nested in outputs and encodings encode with this module's serializers
from snakepit.bridge.arrays import ArraySerializer, owned_array

__all__ = ["SERIALIZERS", "ArraySerializer"]


def _loaded(module: str, name: str) -> Any:
    found = sys.modules.get(module)
    return getattr(found, name, None) if found is not None else None


def _nested(value: Any) -> Any:
    """Containers of tensors as wire data (snakepit's own walk, with these serializers)."""
    from snakepit.bridge.plugins import encode_value

    return encode_value(value, SERIALIZERS)


def _restore(value: Any) -> Any:
    from snakepit.bridge.plugins import decode_value

    return decode_value(value, SERIALIZERS)


class TensorSerializer:
    name = "torch.Tensor"

    def claims(self, value: Any) -> bool:
        tensor = _loaded("torch", "Tensor")
        return tensor is not None and isinstance(value, tensor)

    def encode(self, tensor: Any) -> dict[str, Any]:
        """dtype, shape and the raw bytes: a view of a contiguous CPU tensor's own memory
        (no copy before the codec; a large one goes to shared memory straight from it),
        a copy only for a strided, GPU or non-CPU tensor."""
        import numpy
        import torch

        tensor = tensor.detach().cpu().contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
        flat = raw.numpy().reshape(-1).view(numpy.uint8)
        return {"dtype": dtype, "shape": list(tensor.shape), "bytes": memoryview(flat)}

    def decode(self, data: dict[str, Any]) -> Any:
        import numpy
        import torch

        def array(dtype: Any) -> Any:
            # writable memory of its own: one copy out of what was received
            return owned_array(data["bytes"], dtype)

        if data["dtype"] == "bfloat16":
            bits = array(numpy.int16)
            return torch.from_numpy(bits).view(torch.bfloat16).reshape(data["shape"])
        dtype = getattr(torch, data["dtype"])
        return torch.from_numpy(array(torch.empty(0, dtype=dtype).numpy().dtype)).reshape(
            data["shape"])


class BatchEncodingSerializer:
    name = "transformers.BatchEncoding"

    def claims(self, value: Any) -> bool:
        batch = _loaded("transformers.tokenization_utils_base", "BatchEncoding")
        return batch is not None and isinstance(value, batch)

    def encode(self, batch: Any) -> dict[str, Any]:
        return {"data": _nested(dict(batch.data))}

    def decode(self, data: dict[str, Any]) -> Any:
        from transformers import BatchEncoding

        return BatchEncoding(_restore(data["data"]))


class ModelOutputSerializer:
    name = "transformers.ModelOutput"

    def claims(self, value: Any) -> bool:
        output = _loaded("transformers.utils.generic", "ModelOutput")
        return output is not None and isinstance(value, output)

    def encode(self, output: Any) -> dict[str, Any]:
        cls = type(output)
        from snakepit.bridge.plugins import encode_fields

        # a field with no wire form (a DynamicCache) stays in the worker as a nested ref
        return {"class": f"{cls.__module__}:{cls.__qualname__}",
                "fields": encode_fields(dict(output.items()), SERIALIZERS)}

    def decode(self, data: dict[str, Any]) -> Any:
        module, _, name = data["class"].partition(":")
        fields = _restore(data["fields"])
        try:
            return getattr(importlib.import_module(module), name)(**fields)
        except (ImportError, AttributeError, TypeError):
            return fields


SERIALIZERS = [TensorSerializer(), ArraySerializer(), BatchEncodingSerializer(),
               ModelOutputSerializer()]
