"""What the protocol's two faces (REST and gRPC) share: the model's name, the version a
request names, its metadata, config and statistics, and inference through that version's
pipeline. Admission, the cache, single flight, the batcher and deadlines are the pipeline's,
as for /v1."""

import time
from importlib.metadata import version as package_version
from typing import Any

from service.errors import InvalidInput, NotFound
from service.model.spec import ModelSpec
from service.oip import model_face
from service.oip.model_face import Answer, InferRequest
from service.oip.statistics import ModelStatistics
from service.routes.deps import checked, serving_of
from service.settings import Settings
from service.versions.serving import Serving

EXTENSIONS = ["classification", "binary_tensor_data", "model_configuration", "statistics"]


class InferenceFront:
    def __init__(self, state: Any, settings: Settings) -> None:
        """`state`: the app's state, where the serving versions are (service.app)."""
        self._state = state
        self.name = settings.oip_model_name
        self.max_batch_size = settings.max_batch_files
        self.statistics = ModelStatistics()

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "resnet-serve",
            "version": package_version("resnet-serve"),
            "extensions": EXTENSIONS,
        }

    def serving(self, model: str, version: str | None) -> Serving:
        """The version a request names (None or "": the live one); NotFound for a model or
        version there is not."""
        if model != self.name:
            raise NotFound(f"no model {model!r}; this server serves {self.name!r}")
        try:
            return serving_of(self._state, version or None)
        except InvalidInput as exc:  # an unknown version
            raise NotFound(str(exc)) from None

    def ready(self, model: str, version: str | None) -> bool:
        try:
            return self.serving(model, version).pipeline.ready
        except Exception:  # not this model, not this version, not loaded
            return False

    async def versions(self) -> list[str]:
        hosted = getattr(self._state, "versions", None)
        if hosted is None:
            return [self._state.serving.name]
        described = await hosted.describe()
        return [v["name"] for v in described["versions"] if v["state"] in ("ready", "live")]

    async def metadata(self, model: str, version: str | None) -> dict[str, Any]:
        serving = self.serving(model, version)
        spec = (await checked(serving.pipeline)).status().spec
        names = [serving.name] if version else await self.versions()
        return model_face.metadata(self.name, spec, names, self._heads(spec))

    async def config(self, model: str, version: str | None) -> dict[str, Any]:
        spec = (await checked(self.serving(model, version).pipeline)).status().spec
        return model_face.config(self.name, spec, self.max_batch_size, self._heads(spec))

    def _heads(self, spec: ModelSpec) -> model_face.Heads:
        """The task heads that answer for the live model (none for another version's)."""
        heads: model_face.Heads = self._state.heads.answering(spec)
        return heads

    async def statistics_of(self, model: str, version: str | None) -> dict[str, Any]:
        if model and model != self.name:
            raise NotFound(f"no model {model!r}; this server serves {self.name!r}")
        names = [self.serving(self.name, version).name] if version else await self.versions()
        return self.statistics.as_json(self.name, names)

    async def infer(self, serving: Serving, request: InferRequest) -> tuple[str, Answer]:
        """The answer of `serving` (the version `self.serving` resolved for the request) and
        its name; errors as the pipeline raises them."""
        started = time.perf_counter()
        try:
            pipeline = await checked(serving.pipeline)
            spec = pipeline.status().spec
            heads = self._heads(spec)
            answer = await model_face.infer(pipeline, spec, request, self.max_batch_size, heads)
        except BaseException:
            self.statistics.failed(serving.name, 1000 * (time.perf_counter() - started))
            raise
        self.statistics.succeeded(serving.name, answer, 1000 * (time.perf_counter() - started))
        return serving.name, answer
