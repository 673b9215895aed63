"""Inside the model, on a separate fp32 torch path: class activation maps, feature maps,
first-layer kernels and the model card.

The stages C1..Cn come from the model itself (timm's `feature_info`), so any timm model the
service can load works, not only ResNet50. Each concurrent explanation gets its own fp32
replica of the model: grad-cam hooks the layers it watches, and two explanations on one
module would see each other's activations.
"""

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from service import extras
from service.errors import InvalidInput, Unavailable
from service.explain.inspection import (
    CamResult,
    FeatureMaps,
    ModelCard,
    Stage,
    StageShape,
)
from service.model.backend import ServingModule
from service.model.device_memory import is_out_of_memory, release_cached_memory
from service.model.fallbacks import Fallbacks
from service.model.spec import ModelSpec


def _record_shape(shapes: dict[str, tuple[int, int, int]], stage: Stage) -> Any:
    # A forward hook that returned a value would replace the module's output.
    def hook(_module: torch.nn.Module, _args: object, output: torch.Tensor) -> None:
        shapes[stage.module] = tuple(output.shape[1:])  # type: ignore[assignment]

    return hook


def resolve_stages(module: torch.nn.Module) -> tuple[Stage, ...]:
    """The model's stages, as timm declares them (feature_info)."""
    info = getattr(module, "feature_info", None)
    if not info:
        raise ValueError(f"{type(module).__name__} declares no stages (timm feature_info)")
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    return tuple(
        Stage(i, str(e["module"]), int(e["num_chs"]), int(e["reduction"]))
        for i, e in enumerate(entries, 1)
    )


def cpu_replica(module: torch.nn.Module) -> torch.nn.Module:
    """An fp32 copy of `module` on the CPU, made without a second copy on its device."""
    memo: dict[int, Any] = {
        id(p): torch.nn.Parameter(p.detach().to("cpu", torch.float32, copy=True), p.requires_grad)
        for p in module.parameters()
    }
    memo |= {id(b): b.detach().to("cpu", copy=True) for b in module.buffers()}
    return copy.deepcopy(module, memo).float().eval()


class Explainer:
    """fp32 replicas of the model; `replica()` lends one to one caller at a time.

    The replicas live on the model's device; where it has no room for them they are made
    on the CPU instead (slower explanations, said once in `fallbacks`), so a full GPU never
    stops the service from starting.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        spec: ModelSpec,
        replicas: int,
        fallbacks: Fallbacks | None = None,
    ) -> None:
        self.spec = spec
        self.stages = resolve_stages(module)
        try:
            self._free = [copy.deepcopy(module).float().eval() for _ in range(replicas)]
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            release_cached_memory()
            self._free = [cpu_replica(module) for _ in range(replicas)]
            (fallbacks or Fallbacks()).warn(
                "explain_device",
                "explanations run on the CPU: the device had no room for their fp32 replicas",
            )
        self._lock = threading.Lock()
        config = spec.data_config
        self._normaliser = ServingModule(torch.nn.Identity(), config["mean"], config["std"])

    @contextmanager
    def replica(self) -> Iterator[Any]:
        """The caller (InProcessInspector) admits at most `replicas` at a time."""
        with self._lock:
            model = self._free.pop()
        try:
            yield model
        finally:
            with self._lock:
                self._free.append(model)

    def stage(self, number: int) -> Stage:
        if not 1 <= number <= len(self.stages):
            raise InvalidInput(f"stage must be 1..{len(self.stages)} for {self.spec.model_id}")
        return self.stages[number - 1]

    def layer(self, name: str | None) -> Stage:
        """A stage by number (`4`), by name (`C4`) or by module (`layer3`); default the last."""
        if name is None:
            return self.stages[-1]
        for stage in self.stages:
            if name in (str(stage.number), f"C{stage.number}", f"c{stage.number}", stage.module):
                return stage
        choices = ", ".join(f"{s.number} (C{s.number}, {s.module})" for s in self.stages)
        raise InvalidInput(f"layer {name!r} is not a stage of {self.spec.model_id}: {choices}")

    def _input(self, pixels: np.ndarray, device: torch.device) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(pixels[None]))
        return self._normaliser.normalise(batch).to(device)

    def cam(self, pixels: np.ndarray, class_id: int | None, method: str, stage: Stage) -> CamResult:
        """A class activation map (grad-cam package) of one image for one class."""
        try:  # optional: a deployment without it still serves everything else
            from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        except ImportError as exc:
            raise Unavailable(extras.missing("explain", "class activation maps")) from exc

        kinds = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}
        kind = kinds.get(method, LayerCAM)
        with self.replica() as model:
            device = next(model.parameters()).device
            images = self._input(pixels, device)
            with torch.no_grad():
                probabilities = model(images).float().softmax(-1)[0]
            chosen = int(probabilities.argmax()) if class_id is None else class_id
            layer = model.get_submodule(stage.module)
            with kind(model=model, target_layers=[layer]) as cam:
                heatmap = cam(input_tensor=images, targets=[ClassifierOutputTarget(chosen)])[0]
        return CamResult(
            np.asarray(heatmap, np.float32),
            chosen,
            float(probabilities[chosen]),
            method,
            stage,
        )

    def features(self, pixels: np.ndarray, stage: Stage) -> FeatureMaps:
        """The activations a stage produces for one image."""
        captured: list[torch.Tensor] = []
        with self.replica() as model, torch.no_grad():
            device = next(model.parameters()).device
            hook = model.get_submodule(stage.module).register_forward_hook(
                lambda _module, _args, output: captured.append(output.detach())
            )
            try:
                model(self._input(pixels, device))
            finally:
                hook.remove()
        return FeatureMaps(captured[0][0].float().cpu().numpy(), stage)

    def kernels(self) -> np.ndarray:
        """The first convolution's filters, (out, in, kh, kw)."""
        with self.replica() as model:
            conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            weights: np.ndarray = conv.weight.detach().float().cpu().numpy()
        return weights

    def card(self, backend: str, precision: str, device: str) -> ModelCard:
        """What the model is, measured from it: parameters, MACs and stage shapes by a forward."""
        spec = self.spec
        _, height, width = spec.data_config["input_size"]
        shapes: dict[str, tuple[int, int, int]] = {}
        with self.replica() as model, torch.no_grad():
            hooks = [
                model.get_submodule(stage.module).register_forward_hook(
                    _record_shape(shapes, stage)
                )
                for stage in self.stages
            ]
            counter = FlopCounterMode(display=False)
            try:
                images = torch.zeros(1, 3, height, width, device=next(model.parameters()).device)
                with counter:
                    model(images)
            finally:
                for hook in hooks:
                    hook.remove()
            parameters = sum(p.numel() for p in model.parameters())
        return ModelCard(
            model=spec.model_id,
            weights=spec.weights,
            warnings=spec.warnings,
            parameters=parameters,
            gmacs=round(counter.get_total_flops() / 2 / 1e9, 3),  # a MAC is two FLOPs
            input_size=tuple(spec.data_config["input_size"]),
            preprocessing={k: v for k, v in spec.data_config.items() if k != "input_size"},
            stages=tuple(
                StageShape(f"C{s.number}", s.module, shapes[s.module]) for s in self.stages
            ),
            embedding_dim=spec.embedding_dim,
            num_classes=spec.num_classes,
            labels=spec.labels_source,
            backend=backend,
            precision=precision,
            device=device,
        )
