"""The model host: the one place a model is set up, served, and replaced while it serves.

It is hosted in this process (service.app) or in a model worker (service.workers.
model_worker), from the same code: load, warm up, batcher, GIL interval, inspector. It is
ready as soon as one backend is warm: with `BACKEND=auto` and no decision made for this
machine that is the reference (torch fp32 on a CPU, fp16 on a GPU where it passes the gate),
and the search for a faster backend runs in the background, in a process of its own at the
lowest priority (service.model.search_process), in the gaps between batches. What serves is
replaced in one way only, `replace`: the replacement is built and warmed beside the live
runtime, then swapped in between two batches, with its batch size and its measured speed
(admission predicts with it from the next request on). The search's winner goes live that
way (built here from the converted models the search cached).
"""

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace as replaced

from prometheus_client import CollectorRegistry, Counter, Gauge

from batching import BatchActivity, Batcher, BatchOutcome, Priority, PrometheusBatchObserver
from batching.metric_families import family
from batching.thread_priority import lower_this_threads_priority
from service import tracing
from service.errors import NotReady
from service.explain.explainer import Explainer
from service.explain.inspector import InProcessInspector
from service.hosting.client import HUNG_MESSAGE, ModelStatus, outputs_or_raise
from service.model import selection
from service.model.backend_search import SearchProgress
from service.model.gil import hand_the_gil_over_quickly
from service.model.model_io import ModelInput, ModelOutputs, ModelResult
from service.model.passing_thread import in_passing_thread
from service.model.runtime import ModelRuntime, load_first_runtime
from service.model.search_process import CONTEXT, Decision, SearchProcess
from service.model.selection import BATCH_SIZES, ModelParts
from service.model.serving_gaps import SearchCancelled, ServingActivity
from service.settings import Settings

log = logging.getLogger(__name__)

ModelBatcher = Batcher[ModelInput, ModelResult]

# The thread here that builds and warms the search's winner is as nice as a thread can be.
_SEARCH_NICENESS = 19
# The swap itself is a few assignments on the event loop; a loop that does not run it in
# this long is shutting down.
_SWAP_TIMEOUT_S = 30.0
# How long a stop waits for the search to reach its next step (a model conversion or int8
# quantization cannot be interrupted; past this its process is killed).
_SEARCH_STOP_S = 30.0


class ModelHost:
    """The live runtime, its batcher and inspector, and the background backend search."""

    def __init__(self, settings: Settings, registry: CollectorRegistry, version: str) -> None:
        """`version`: the model version this host serves, the label of its metrics (every
        version's host in a process reports on the same metrics of `registry`)."""
        self._settings = settings
        self._registry = registry
        self._version = version
        self._live: ModelRuntime | None = None
        self._parts: ModelParts | None = None  # kept while a search is due
        self._batcher: ModelBatcher | None = None
        self._inspector: InProcessInspector | None = None
        self._progress: SearchProgress | None = None
        self._stopping = threading.Event()
        self._search: threading.Thread | None = None
        self._search_process: SearchProcess | None = None
        # The batcher's busy/idle state, shared with the search process (while one is due).
        self._activity: ServingActivity | None = None
        # Set once no search is due or running any more (its winner, if any, serving).
        self.searched = threading.Event()
        self._backend = family(
            registry,
            Gauge,
            "model_backend",
            "1 for the backend that serves now (0 for those it replaced)",
            ["version", "backend", "batch_size"],
            multiprocess_mode="livemax",
        )
        self._swaps = family(
            registry,
            Counter,
            "model_backend_swaps",
            "Times what serves was replaced while serving",
            ["version"],
        ).labels(version)

    async def load(self) -> None:
        """Load the model and make it ready on one warm backend (raises ModelLoadError)."""
        started = time.perf_counter()
        runtime, search_parts = await in_passing_thread(
            lambda: load_first_runtime(self._settings), "model-load"
        )
        log.info("warming up %s at batch %d", runtime.backend.name, runtime.batch_size)
        await in_passing_thread(runtime.warm_up, "model-warm-up")
        self._live, self._parts = runtime, search_parts
        self._activity = None if search_parts is None else ServingActivity(CONTEXT)
        self._batcher = model_batcher(
            self.predict_batch,
            runtime,
            self._settings,
            self._registry,
            self._version,
            largest=max(BATCH_SIZES[runtime.device.split(":")[0]]),
            activity=self._activity,
        )
        self._backend.labels(self._version, runtime.backend.name, str(runtime.batch_size)).set(1)
        hand_the_gil_over_quickly()  # the event loop shares this process with the model
        for warning in runtime.spec.warnings:
            log.warning(warning)
        self._inspector = await inspector_for(self, self._settings, self._registry, self._version)
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
        return model_status(
            self.runtime,
            queue_depth,
            hung=hung,
            backend_search=search,
            batch_limit=self.batcher.batch_limit,
        )

    @property
    def search_pid(self) -> int | None:
        """The background search's process id while one runs (its threads' priority is
        observable there)."""
        return None if self._search_process is None else self._search_process.pid

    async def start(self) -> None:
        """Serve; with a search due, start it in the background."""
        await self.batcher.start()
        if self._parts is None or self._activity is None:
            self.searched.set()
            return
        self._progress = SearchProgress()
        self._search_process = SearchProcess(self._settings, self._activity)
        loop = asyncio.get_running_loop()
        self._search = threading.Thread(
            target=self._search_and_replace,
            args=(self._parts, self._search_process, loop),
            name="backend-search",
            daemon=True,
        )
        self._search.start()
        log.info(
            "searching for a faster backend in the background; serving meanwhile on %s",
            self.runtime.backend.name,
        )

    async def stop(self, drain_timeout_s: float) -> None:
        self._stopping.set()
        if self._search_process is not None:
            self._search_process.stop()  # it ends at its next step; what it wrote is atomic
        await self.batcher.stop(drain_timeout_s=drain_timeout_s)
        if self._search is not None:
            await asyncio.to_thread(self._search.join, _SEARCH_STOP_S)
            if self._search.is_alive() and self._search_process is not None:
                self._search_process.kill()  # inside a conversion: it cannot stop sooner
                await asyncio.to_thread(self._search.join, _SEARCH_STOP_S)

    async def replace(self, runtime: ModelRuntime, why: str) -> None:
        """Serve `runtime` (built and warmed beside the live one) from the next batch on;
        admission predicts with its measured speed, where it has one, from now on."""
        old = self.runtime
        self._live = runtime
        speed = runtime.choice.images_per_s
        self.batcher.resize(
            max_batch_size=runtime.batch_size,
            max_queue=max(self._settings.queue_size, 2 * runtime.batch_size),
            seconds_per_item=1 / speed if speed > 0 else None,
        )
        self._backend.labels(self._version, old.backend.name, str(old.batch_size)).set(0)
        self._backend.labels(self._version, runtime.backend.name, str(runtime.batch_size)).set(1)
        if runtime.backend is not old.backend or runtime.batch_size != old.batch_size:
            self._swaps.inc()  # the same backend, newly measured, is no swap
        log.info(
            "now serving on %s at batch %d (was %s at batch %d): %s",
            runtime.backend.name,
            runtime.batch_size,
            old.backend.name,
            old.batch_size,
            why,
        )

    def _search_and_replace(
        self, parts: ModelParts, search: SearchProcess, loop: asyncio.AbstractEventLoop
    ) -> None:
        """The search thread: starts the search process (its parent-death signal follows this
        thread, which lives as long as it) and serves each decision it makes."""
        lower_this_threads_priority(_SEARCH_NICENESS)
        progress = self._progress
        assert progress is not None
        try:
            search.start()
            for decision in search.decisions(progress):
                self._serve_decision(decision, parts, loop)
            live = self.runtime
            progress.finish(f"{live.backend.name} at batch {live.batch_size}: {live.choice.reason}")
        except SearchCancelled:
            progress.finish("stopped: the service is shutting down")
        except Exception as exc:  # the reference keeps serving: a failed search is no outage
            progress.finish(f"failed ({type(exc).__name__}: {exc}); still on the reference")
            log.exception(
                "the background backend search failed; serving on %s", self.runtime.backend.name
            )
        finally:
            search.close()
            if self._activity is not None:
                self._activity.close()
            self._parts = None
            self.searched.set()

    def _serve_decision(
        self, decision: Decision, parts: ModelParts, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Build the decided backend here (from the converted models the search cached),
        warm it beside the live one, and swap it in."""
        if self._stopping.is_set():
            raise SearchCancelled
        choice, live = decision.choice, self.runtime
        if choice.candidate == live.choice.candidate and choice.batch_size == live.batch_size:
            replacement = replaced(live, choice=choice)  # the same backend, now measured
        else:
            backend = selection.build(choice.candidate, parts, self._settings)
            replacement = replaced(
                live, backend=backend, choice=choice, batch_size=choice.batch_size
            )
            replacement.warm_up()
        why = choice.reason
        if not decision.final:
            why = f"measured under load, served until measured again with serving idle: {why}"
        swap = asyncio.run_coroutine_threadsafe(self.replace(replacement, why), loop)
        swap.result(timeout=_SWAP_TIMEOUT_S)


async def inspector_for(
    host: ModelHost, settings: Settings, registry: CollectorRegistry, version: str
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
        version=version,
    )


def model_status(
    runtime: "ModelRuntime",
    queue_depth: int,
    hung: bool,
    backend_search: str | None = None,
    batch_limit: int = 0,
) -> ModelStatus:
    return ModelStatus(
        spec=runtime.spec,
        device=runtime.device,
        backend=runtime.backend.name,
        max_batch_size=runtime.largest_batch,
        backend_choice=runtime.choice.reason,
        queue_depth=queue_depth,
        jpeg_on_device=runtime.jpeg_decoder is not None and runtime.jpeg_decoder.working,
        hung=hung,
        warnings=tuple(runtime.fallbacks.warnings),
        backend_search=backend_search,
        parameter_bytes=runtime.parameter_bytes,
        batch_limit=batch_limit or runtime.largest_batch,
    )


def model_batcher(
    run_batch: Callable[[list[ModelInput]], list[ModelResult]],
    runtime: "ModelRuntime",
    settings: Settings,
    registry: CollectorRegistry,
    version: str,
    largest: int,
    activity: BatchActivity | None = None,
) -> ModelBatcher:
    """The batcher in front of a runtime (`run_batch` runs whichever is live), with its
    metrics on `registry` as model version `version`'s; `largest`: the biggest batch size a
    replacement may bring.

    The queue holds at least two batches: a shorter one would refuse work the model could
    take (a GPU's batch of 256 against the default queue of 64). The latency target leaves a
    tenth of itself for what happens outside the batcher (reading, decoding, answering).
    On a CPU the model's threads run `MODEL_NICE` steps nicer than those answering requests.
    The runtime's fallback counts are exported on the same registry.
    """
    runtime.fallbacks.bind(registry, version)
    return Batcher(
        run_batch,
        max_batch_size=runtime.batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=max(settings.queue_size, 2 * runtime.batch_size),
        max_latency_s=0.9 * settings.target_latency_ms / 1000,
        hung_after_s=settings.watchdog_s,
        owner_setup=(
            functools.partial(lower_this_threads_priority, settings.model_nice)
            if runtime.device == "cpu"
            else None
        ),
        observer=PrometheusBatchObserver(registry, max(largest, runtime.batch_size), version),
        activity=activity,
        tracing=tracing.BatchSpans() if tracing.on() else None,
        name="model",
    )


class InProcessModel:
    """The model host in this process."""

    def __init__(self, host: "ModelHost"):
        self.host = host

    @property
    def ready(self) -> bool:
        batcher = self.host.batcher
        return batcher.running and not batcher.hung

    def status(self) -> ModelStatus:
        if self.host.batcher.hung:
            raise NotReady(HUNG_MESSAGE)
        if not self.ready:
            raise NotReady("the model is not loaded or is shutting down")
        return self.host.status(self.host.batcher.queue_depth, hung=False)

    @property
    def idle(self) -> bool:
        return self.host.batcher.wait_idle(0)

    def admit(self, ahead: int = 0, priority: Priority = Priority.INTERACTIVE) -> None:
        self.host.batcher.admit(ahead, priority)

    async def check(self) -> None:
        self.status()

    async def infer(
        self, item: ModelInput, timeout_s: float, key: str, priority: Priority
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        # One process: the pipeline's own single-flight has already joined identical images.
        outcome = await self.host.batcher.submit(item, timeout_s=timeout_s, priority=priority)
        tracing.record_batch_timings(outcome.queued_s, outcome.run_s, outcome.batch_size)
        return outputs_or_raise(outcome), False

    async def start(self) -> None:
        await self.host.start()

    async def connected_if_listening(self) -> None:
        return None  # in this process

    async def stop(self, drain_timeout_s: float) -> None:
        await self.host.stop(drain_timeout_s=drain_timeout_s)
