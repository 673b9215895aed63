"""What a loaded model is: id, weights, preprocessing, labels, embedding size, fingerprint.

Light to import: the index worker and the HTTP workers pass specs around without loading a
model, so torch and timm are imported only where a spec is made from a loaded model.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from service.model.weights import LoadedModel


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    weights: str
    data_config: dict[str, Any]
    labels: tuple[str, ...]
    embedding_dim: int
    fingerprint: str  # changes whenever outputs could change: model, weights, preprocessing
    warnings: tuple[str, ...]
    labels_source: str = "unnamed classes (class_N)"  # where the class names come from

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @classmethod
    def of(cls, loaded: "LoadedModel") -> "ModelSpec":
        from timm.data.config import resolve_model_data_config

        module = loaded.module
        data_config = dict(resolve_model_data_config(module))  # type: ignore[no-untyped-call]
        identity = {
            "model": loaded.model_id,
            "weights": loaded.weights_digest,
            "data_config": data_config,
        }
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return cls(
            model_id=loaded.model_id,
            weights=loaded.weights,
            data_config=data_config,
            labels=loaded.labels or class_labels(module),
            labels_source=loaded.labels_source or labels_source(module),
            embedding_dim=_int_attribute(module, "num_features"),
            fingerprint=fingerprint[:16],
            warnings=loaded.warnings,
        )


def class_labels(module: "torch.nn.Module") -> tuple[str, ...]:
    """Human-readable class names: ImageNet descriptions when the head is an ImageNet one."""
    from timm.data.imagenet_info import ImageNetInfo, infer_imagenet_subset

    num_classes = _int_attribute(module, "num_classes")
    subset = infer_imagenet_subset(module)
    if subset:
        info = ImageNetInfo(subset)
        return tuple(info.index_to_description(i) for i in range(num_classes))
    return tuple(f"class_{i}" for i in range(num_classes))


def labels_source(module: "torch.nn.Module") -> str:
    from timm.data.imagenet_info import infer_imagenet_subset

    subset = infer_imagenet_subset(module)
    return f"{subset} (timm ImageNetInfo)" if subset else "unnamed classes (class_N)"


def _int_attribute(module: "torch.nn.Module", name: str) -> int:
    """timm models keep plain ints such as num_features as attributes nn.Module cannot type."""
    value = module.__dict__[name]
    assert isinstance(value, int), f"{name} is {value!r}"
    return value
