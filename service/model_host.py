"""The model host: the one place a model is set up, served, and replaced while it serves.

It is hosted in this process (service.app) or in a model worker (service.workers.
model_worker), from the same code: load, warm up, batcher, GIL interval, inspector. It is
ready as soon as one backend is warm: with `BACKEND=auto` and no cached decision that is the
reference (torch fp32 on a CPU, fp16 on a GPU where it passes the gate), and the search for
a faster backend runs in the background (service.model.backend_search). What serves is
replaced in one way only, `replace`: the replacement is built and warmed beside the live
runtime, then swapped in between two batches, with its batch size. The search's winner goes
live that way; a new model version will too.
"""

import asyncio
import logging
import threading
import time
from dataclasses import replace as replaced

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.explain.explainer import Explainer
from service.explain.inspector import InProcessInspector
from service.model.backend_search import SearchCancelled, SearchProgress, search_backends
from service.model.gil import hand_the_gil_over_quickly
from service.model.model_io import ModelInput, ModelResult
from service.model.passing_thread import in_passing_thread
from service.model.runtime import ModelRuntime, load_first_runtime
from service.model.selection import BATCH_SIZES, ModelParts
from service.model.thread_priority import lower_this_threads_priority
from service.model_client import ModelBatcher, ModelStatus, model_batcher, model_status
from service.settings import Settings

log = logging.getLogger(__name__)

# The background search runs as nice as a thread can be: serving comes first.
_SEARCH_NICENESS = 19
# And each of its forward passes waits up to this long for the model to be idle first.
_YIELD_S = 1.0
# The swap itself is a few assignments on the event loop; a loop that does not run it in
# this long is shutting down.
_SWAP_TIMEOUT_S = 30.0
# How long a stop waits for the search to reach its next step (a model conversion or int8
# quantization cannot be interrupted; past this the process exits without it).
_SEARCH_STOP_S = 60.0


class ModelHost:
    """The live runtime, its batcher and inspector, and the background backend search."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self._settings = settings
        self._registry = registry
        self._live: ModelRuntime | None = None
        self._parts: ModelParts | None = None  # kept while a search is due
        self._batcher: ModelBatcher | None = None
        self._inspector: InProcessInspector | None = None
        self._progress: SearchProgress | None = None
        self._stopping = threading.Event()
        self._search: threading.Thread | None = None
        # Set once no search is due or running any more (its winner, if any, serving).
        self.searched = threading.Event()
        self._backend = Gauge(
            "model_backend",
            "1 for the backend that serves now (0 for those it replaced)",
            ["backend", "batch_size"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._swaps = Counter(
            "model_backend_swaps", "Times what serves was replaced while serving", registry=registry
        )

    async def load(self) -> None:
        """Load the model and make it ready on one warm backend (raises ModelLoadError)."""
        started = time.perf_counter()
        runtime, search_parts = await in_passing_thread(
            lambda: load_first_runtime(self._settings), "model-load"
        )
        log.info("warming up %s at batch %d", runtime.backend.name, runtime.batch_size)
        await in_passing_thread(runtime.warm_up, "model-warm-up")
        self._live, self._parts = runtime, search_parts
        self._batcher = model_batcher(
            self.predict_batch,
            runtime,
            self._settings,
            self._registry,
            largest=max(BATCH_SIZES[runtime.device.split(":")[0]]),
        )
        self._backend.labels(runtime.backend.name, str(runtime.batch_size)).set(1)
        hand_the_gil_over_quickly()  # the event loop shares this process with the model
        for warning in runtime.spec.warnings:
            log.warning(warning)
        self._inspector = await inspector_for(self, self._settings, self._registry)
        log.info(
            "ready in %.1f s: %s on %s, %s at batch %d",
            time.perf_counter() - started,
            runtime.spec.model_id,
            runtime.device,
            runtime.backend.name,
            runtime.batch_size,
        )

    @property
    def runtime(self) -> ModelRuntime:
        """What serves now."""
        assert self._live is not None, "load() first"
        return self._live

    @property
    def batcher(self) -> ModelBatcher:
        assert self._batcher is not None, "load() first"
        return self._batcher

    @property
    def inspector(self) -> InProcessInspector:
        assert self._inspector is not None, "load() first"
        return self._inspector

    def predict_batch(self, items: list[ModelInput]) -> list[ModelResult]:
        """The batcher's batch function: each batch runs whole on the runtime live when it
        starts, so a swap never splits one."""
        return self.runtime.predict_batch(items)

    def status(self, queue_depth: int, hung: bool) -> ModelStatus:
        search = None if self._progress is None else self._progress.describe()
        return model_status(self.runtime, queue_depth, hung=hung, backend_search=search)

    async def start(self) -> None:
        """Serve; with a search due, start it in the background."""
        await self.batcher.start()
        if self._parts is None:
            self.searched.set()
        else:
            self._progress = SearchProgress()
            loop = asyncio.get_running_loop()
            self._search = threading.Thread(
                target=self._search_and_replace,
                args=(self._parts, loop),
                name="backend-search",
                daemon=True,  # a conversion that outlasts the stop must not hold the exit
            )
            self._search.start()
            log.info(
                "searching for a faster backend in the background; serving meanwhile on %s",
                self.runtime.backend.name,
            )

    async def stop(self, drain_timeout_s: float) -> None:
        self._stopping.set()  # the search ends at its next step; what it wrote is atomic
        await self.batcher.stop(drain_timeout_s=drain_timeout_s)
        if self._search is not None:
            # A thread still inside torch when the interpreter exits aborts the process
            # ("terminate called"): let it reach its next step, which is a forward away.
            await asyncio.to_thread(self._search.join, _SEARCH_STOP_S)

    async def replace(self, runtime: ModelRuntime, why: str) -> None:
        """Serve `runtime` (built and warmed beside the live one) from the next batch on."""
        old = self.runtime
        self._live = runtime
        self.batcher.resize(
            max_batch_size=runtime.batch_size,
            max_queue=max(self._settings.queue_size, 2 * runtime.batch_size),
        )
        self._backend.labels(old.backend.name, str(old.batch_size)).set(0)
        self._backend.labels(runtime.backend.name, str(runtime.batch_size)).set(1)
        self._swaps.inc()
        log.info(
            "now serving on %s at batch %d (was %s at batch %d): %s",
            runtime.backend.name,
            runtime.batch_size,
            old.backend.name,
            old.batch_size,
            why,
        )

    def _yield_to_serving(self) -> None:
        """Before each forward pass of the search: stop there if the service is stopping;
        else wait for the model to be idle, for up to _YIELD_S (so a saturated model still
        lets the search creep on)."""
        if self._stopping.is_set():
            raise SearchCancelled
        self.batcher.wait_idle(_YIELD_S)

    def _search_and_replace(self, parts: ModelParts, loop: asyncio.AbstractEventLoop) -> None:
        lower_this_threads_priority(_SEARCH_NICENESS)
        progress = self._progress
        assert progress is not None
        try:
            choice, backend = search_backends(
                parts, self._settings, progress, self._stopping, self._yield_to_serving
            )
            live = self.runtime
            replacement = replaced(
                live, backend=backend, choice=choice, batch_size=choice.batch_size
            )
            replacement.warm_up()
            if self._stopping.is_set():
                raise SearchCancelled
            progress.finish(f"{backend.name} at batch {choice.batch_size}: {choice.reason}")
            swap = asyncio.run_coroutine_threadsafe(self.replace(replacement, choice.reason), loop)
            swap.result(timeout=_SWAP_TIMEOUT_S)
        except SearchCancelled:
            progress.finish("stopped: the service is shutting down")
        except Exception as exc:  # the reference keeps serving: a failed search is no outage
            progress.finish(f"failed ({type(exc).__name__}: {exc}); still on the reference")
            log.exception(
                "the background backend search failed; serving on %s", self.runtime.backend.name
            )
        finally:
            self._parts = None
            self.searched.set()


async def inspector_for(
    host: ModelHost, settings: Settings, registry: CollectorRegistry
) -> InProcessInspector:
    """The fp32 inspection path beside the served model, with its own admission limit."""
    runtime = host.runtime
    # Copying the model runs torch: not on the event loop's thread, which lives on.
    explainer = await in_passing_thread(
        lambda: Explainer(
            runtime.module,
            runtime.spec,
            replicas=settings.explain_concurrency,
            fallbacks=runtime.fallbacks,
        ),
        "explainer-load",
    )

    def serving() -> tuple[str, str, str]:
        live = host.runtime
        return live.backend.name, live.choice.candidate.precision, live.device

    return InProcessInspector(
        explainer,
        serving=serving,
        concurrency=settings.explain_concurrency,
        queue=settings.explain_queue,
        registry=registry,
    )
