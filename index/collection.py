"""A searchable collection: the durable store plus the FAISS indexes derived from it.

What serves searches is a generation (an immutable main index, see index.generation) plus a
small delta index that takes the additions made since the generation was built. Writes touch
only the store, the delta and the live-label bitmap, so no write does work proportional to
the collection: a delete clears a bit; an add goes to the delta. A background builder thread
makes the next generation beside the live one (a new plan as the collection grows, or a
merge of the delta and a drop of deleted vectors), writes it to disk, adds the labels that
arrived meanwhile to a fresh delta, and swaps both in at once.

Threading contract: `put`, `delete`, `rebuild` and `close` come from ONE writer thread (the
service gives the collection a single-thread executor); `search`, `similar`, `get` and
`stats` may come from any number of threads at once.
"""

import fcntl
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import faiss
import numpy as np

from batching.thread_priority import lower_this_threads_priority
from index.exact_scores import exact_among, rerank
from index.filtered_plan import choose_filtered
from index.filters import Filter, MetadataPostings
from index.generation import BuildCancelled, Generation, build, candidates
from index.live_labels import LiveLabels, pack
from index.plan import AUTO, IndexPlan, choose, rebuild_reason
from index.rwlock import ReadWriteLock
from index.snapshot_header import FORMAT, SnapshotHeader, UnreadableHeader, read_header
from index.store import ItemStore, StoredItem, stored_form
from index.vector_index import FLAT, VectorIndex

log = logging.getLogger(__name__)

FINAL_CATCH_UP = 200  # labels the swap adds while writes wait; more are added before it
FLAT_DELTA_LIMIT = 20_000  # exact search over the delta stays under a few milliseconds
BUILD_RETRY_S = 60.0  # after a failed build, the next try waits this long
CLOSE_WAIT_S = 10.0  # how long close() waits for a background build to stop


@dataclass(frozen=True)
class CollectionFiles:
    """Where a collection keeps its files: the one place that knows the disk layout."""

    directory: Path

    @property
    def lock(self) -> Path:
        return self.directory / "LOCK"

    @property
    def store(self) -> Path:
        return self.directory / "items.sqlite3"

    @property
    def snapshot_header(self) -> Path:
        return self.directory / "snapshot.json"


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    metadata: dict[str, Any]


@dataclass(frozen=True)
class CollectionStats:
    count: int
    d: int
    kind: str  # the FAISS factory serving now ("Flat": exact)
    factory: str  # INDEX_FACTORY ("auto", or a factory string)
    reason: str  # why this kind and these parameters
    nprobe: int  # IVF lists searched per query (0: not IVF)
    fingerprint: str
    model: str
    tombstones: int  # deleted vectors still in the index, dropped by the next build
    changes_since_snapshot: int  # additions in the delta, not yet in a snapshot
    building: str | None  # why a background build is running, or None
    last_build_error: str | None
    index_bytes_per_item: int  # the main FAISS index's memory per item (see VectorIndex)
    store_vector_bytes: int  # a vector in the store (float16)
    filtered: str  # how filtered queries are answered (see index.filtered_plan)
    filtered_exact_up_to: int  # filters matching up to this many items are answered exactly


@dataclass(frozen=True)
class FilteredRoute:
    """How one search is answered: `plan` exact (a scan of the matching items' stored
    vectors), approximate (the inverted file with the filter's bitmap: nprobe, and `depth`
    candidates re-ranked), index (an exact or graph index with the bitmap) or unfiltered."""

    plan: str
    nprobe: int
    depth: int | None  # None: the default depth for the share


@dataclass(frozen=True)
class _Serving:
    """What searches use: swapped as one reference, so a search sees one consistent pair."""

    generation: Generation
    delta: VectorIndex  # labels above the generation's watermark; changed under the lock


class Collection:
    def __init__(
        self,
        directory: Path,
        *,
        d: int,
        fingerprint: str,
        model: str,
        factory: str = AUTO,
        snapshot_every: int = 1000,
        nprobe: int = 16,
        ef_search: int = 64,
        target_ms: float = 5.0,
        exact_up_to: int | None = None,
    ) -> None:
        """Open (or create) the collection in `directory`.

        Raises IndexInUse when another process has it open, and ModelMismatch when it holds
        vectors of another model. `snapshot_every`: additions the delta takes before they
        are merged into a new generation (at least; a tenth of the collection above 10k).
        `exact_up_to` overrides the measured size up to which `auto` searches exactly.
        """
        self.directory = directory
        self.fingerprint = fingerprint
        self.model = model
        self.factory = factory
        self._snapshot_every = snapshot_every
        self._nprobe = nprobe
        self._ef_search = ef_search
        self._target_ms = target_ms
        self._exact_up_to = exact_up_to
        files = CollectionFiles(directory)
        self._header_path = files.snapshot_header
        directory.mkdir(parents=True, exist_ok=True)
        self._process_lock = hold_process_lock(files.lock)
        try:
            self.store = ItemStore(files.store, d, fingerprint, model)
        except BaseException:
            self._process_lock.close()
            raise
        self._lock = ReadWriteLock()  # the delta: one add at a time, no search meanwhile
        self._apply = threading.Lock()  # a write (store and memory) against a swap
        self._build_lock = threading.Lock()  # one build at a time
        self._live = LiveLabels()
        self._postings = MetadataPostings()
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._building: str | None = None
        self._asked: bool | None = None  # a build asked for: fresh (True) or a merge
        self._last_build_error: str | None = None
        self._read_live_items()
        generation = self._opening_generation(self._load_snapshot())
        self._serving = _Serving(generation, self._delta_for(generation))
        if generation.main.nlist and generation.plan.filtered is None:
            log.info("the index snapshot predates measured filtered plans: measuring them now")
            self._asked = True  # a fresh build in the background; this one serves meanwhile
        added = self._catch_up(self._serving.delta, generation.watermark)[1]
        if added:
            log.info("index caught up on %d items added after its snapshot", added)
        self._builder = threading.Thread(target=self._run_builds, name="index-builder", daemon=True)
        self._builder.start()
        self._wake.set()

    @property
    def d(self) -> int:
        return self.store.d

    # --- writes (one writer thread) ---------------------------------------------------------

    def put(
        self, item_id: str, vector: np.ndarray, metadata: dict[str, Any], image: bytes | None
    ) -> bool:
        """Add or replace; durable when it returns. True if the id was new."""
        vector = stored_form(vector)  # the index holds what a build from the store would
        with self._apply:
            label, replaced = self.store.put(item_id, vector, metadata, image)
            delta = self._serving.delta
            with self._lock.writing():
                delta.add(np.array([label], np.int64), vector.reshape(1, -1))
            self._postings.add(label, metadata)
            self._live.set(label)
            if replaced is not None:
                self._live.clear(replaced)
        self._wake.set()
        return replaced is None

    def delete(self, item_id: str) -> bool:
        """Remove; durable when it returns. False if the id was unknown."""
        with self._apply:
            label = self.store.delete(item_id)
            if label is None:
                return False
            self._live.clear(label)
        self._wake.set()
        return True

    def rebuild(self) -> None:
        """Build a fresh index from the store now, on this thread (after vectors were
        replaced in place, as `index reindex` does), and swap it in."""
        self._build_and_swap(self._wanted_plan(), "rebuild asked for", True)

    def build_in_background(self, *, fresh: bool = False) -> None:
        """Start a background build now (a merge, or with `fresh` a new index trained again),
        as if the collection had asked for one; returns at once."""
        self._asked = fresh
        self._wake.set()

    def settle(self, timeout: float = 600.0) -> None:
        """Wait until no background build runs or is due (tests and bulk tools)."""
        deadline = time.monotonic() + timeout
        while self._building is not None or self._build_due() is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the index is still building after {timeout:g} s")
            self._wake.set()
            time.sleep(0.02)

    def close(self) -> None:
        """Stop the background builder and release the files. Safe to call twice.

        Nothing needs writing: the last snapshot plus the labels above its watermark in the
        store are the index."""
        if self._process_lock.closed:
            return
        self._closing.set()
        self._wake.set()
        # A build stops at its next chunk; one inside FAISS training cannot, and is left to
        # die with the process (it writes nothing once closing: see _build).
        self._builder.join(timeout=CLOSE_WAIT_S)
        self.store.close()
        self._process_lock.close()  # releases the flock

    # --- reads (any thread) -----------------------------------------------------------------

    def get(self, item_id: str) -> StoredItem | None:
        return self.store.get(item_id)

    def image(self, item_id: str) -> bytes | None:
        """The image stored with an item (None: unknown id, or stored without its image)."""
        return self.store.image(item_id)

    def search(
        self,
        vector: np.ndarray,
        k: int,
        exclude: str | None = None,
        where: Filter | None = None,
    ) -> list[SearchHit]:
        """The k nearest live items (matching `where`, when given), best first."""
        serving = self._serving
        want = k + (exclude is not None)
        query = np.asarray(vector, np.float32)
        if where is None:
            route = FilteredRoute("unfiltered", serving.generation.plan.nprobe, None)
            allowed, matching = self._live.bits(), self._live.count
            scores, labels = self._nearest(serving, query, want, allowed, route, 1.0)
        else:
            mask = self._matching(where)
            matching = int(np.count_nonzero(mask))
            if matching == 0:
                return []
            route = self._route(serving.generation, matching, k)
            log.debug("filtered search, %d matches: %s", matching, route)
            if route.plan == "exact":
                scores, labels = exact_among(self.store, query, np.flatnonzero(mask), want)
            else:
                share = matching / max(1, self._live.count)
                allowed = pack(mask)
                scores, labels = self._nearest(serving, query, want, allowed, route, share)
        found = self.store.by_labels(labels.tolist())
        hits = [
            SearchHit(found[label].id, float(score), found[label].metadata)
            for score, label in zip(scores.tolist(), labels.tolist(), strict=True)
            # A label can vanish between search and lookup when a delete lands in between.
            if label in found and found[label].id != exclude
        ]
        return hits[:k]

    def filtered_route(self, where: Filter, k: int = 10) -> "FilteredRoute":
        """How a search for k with this filter would be answered now (the debug log says it
        too)."""
        matching = int(np.count_nonzero(self._matching(where)))
        return self._route(self._serving.generation, matching, k)

    def similar(self, item_id: str, k: int, where: Filter | None = None) -> list[SearchHit] | None:
        """Nearest items to a stored item (itself excluded); None if the id is unknown."""
        vector = self.store.vector(item_id)
        return None if vector is None else self.search(vector, k, exclude=item_id, where=where)

    def stats(self) -> CollectionStats:
        serving = self._serving
        main, delta, plan = serving.generation.main, serving.delta, serving.generation.plan
        with self._lock.reading():
            in_delta = delta.ntotal
        return CollectionStats(
            count=self._live.count,
            d=self.d,
            kind=plan.factory,
            factory=self.factory,
            reason=plan.reason,
            nprobe=plan.nprobe,
            fingerprint=self.fingerprint,
            model=self.model,
            tombstones=max(0, main.ntotal + in_delta - self._live.count),
            changes_since_snapshot=in_delta,
            building=self._building,
            last_build_error=self._last_build_error,
            index_bytes_per_item=main.bytes_per_item,
            store_vector_bytes=2 * self.d,
            filtered=self._describe_filtered(plan, main.nlist),
            filtered_exact_up_to=(
                plan.filtered.exact_up_to(self._live.count) if plan.filtered is not None else 0
            ),
        )

    def _describe_filtered(self, plan: IndexPlan, nlist: int) -> str:
        if not nlist:
            return "the index takes the filter's bitmap (exact or graph search)"
        if plan.filtered is None:
            return (
                "approximate, nprobe grown with 1/share (not measured; the next build measures it)"
            )
        return plan.filtered.describe(self._live.count)

    def _matching(self, where: Filter) -> np.ndarray:
        """A bool per label: live and matching the filter."""
        live = self._live.as_bool()
        matching: np.ndarray = self._postings.matching(where, len(live)) & live
        return matching

    def _route(self, generation: Generation, matching: int, k: int) -> "FilteredRoute":
        """The plan for a filter with `matching` live matches (see index.filtered_plan)."""
        plan, nlist = generation.plan, generation.main.nlist
        if not nlist:  # exact or a graph: the index itself takes the filter's bitmap
            return FilteredRoute("index", plan.nprobe, None)
        if plan.filtered is None:  # not measured (a snapshot from before): scale nprobe
            # A filter matching a fraction f of the items finds 1/f fewer per list.
            nprobe = min(nlist, math.ceil(plan.nprobe * self._live.count / matching))
            return FilteredRoute("approximate, not measured", nprobe, None)
        step = choose_filtered(plan.filtered, matching, self._live.count, k)
        if step is None:
            return FilteredRoute("exact", 0, None)
        return FilteredRoute(
            f"approximate as measured at share {step.share:g}", step.nprobe, step.depth
        )

    def _nearest(
        self,
        serving: _Serving,
        query: np.ndarray,
        want: int,
        allowed: np.ndarray,
        route: "FilteredRoute",
        share: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and labels of the best `want` allowed items (a `share` of all), best first."""
        main = serving.generation.main
        exact = main.exact
        if route.depth is None:
            wanted = candidates(want, exact, share)
        else:  # measured for the top 10 (and the query left out): deeper for every 10 more
            wanted = route.depth * math.ceil(max(1, want - 1) / 10)
        # Too few allowed items in the lists probed: all of them, then.
        for nprobe in (route.nprobe, main.nlist):
            D, I = main.search(query[None], wanted, live=allowed, nprobe=nprobe)  # immutable
            with self._lock.reading():
                dD, dI = serving.delta.search(query[None], wanted, live=allowed, nprobe=nprobe)
            scores = np.concatenate([D[0], dD[0]])
            labels = np.concatenate([I[0], dI[0]])
            keep = labels >= 0
            scores, labels = scores[keep], labels[keep]
            order = np.argsort(-scores, kind="stable")[:wanted]
            scores, labels = scores[order], labels[order]
            if not exact:
                scores, labels = rerank(self.store, query, labels.tolist())
            enough = len(labels) >= min(want, int(share * self._live.count))
            if enough or nprobe >= main.nlist:
                break
        return scores[:want], labels[:want]

    # --- generations ------------------------------------------------------------------------

    def _wanted_plan(self) -> IndexPlan:
        return choose(
            self.factory,
            self._live.count,
            self.d,
            target_ms=self._target_ms,
            nprobe=self._nprobe,
            exact_up_to=self._exact_up_to,
        )

    def _delta_limit(self, delta: VectorIndex) -> int:
        share = self._live.count // 10
        if delta.exact:
            share = min(share, FLAT_DELTA_LIMIT)
        return max(self._snapshot_every, share)

    def _opening_generation(self, snapshot: Generation | None) -> Generation:
        """The snapshot, if its delta would be small; else a generation built now (no
        snapshot yet, or a bulk import added more than a delta should hold)."""
        if snapshot is not None:
            pending = self.store.count_above(snapshot.watermark)
            limit = self._delta_limit(self._delta_for(snapshot))
            if pending <= limit:
                return snapshot
            log.info("%d items were added after the index snapshot; building it now", pending)
        wanted = self._wanted_plan()
        if snapshot is not None and rebuild_reason(snapshot.plan, wanted, self._live.count):
            snapshot = None  # the collection outgrew the snapshot's plan: a fresh one
        return self._build(wanted if snapshot is None else snapshot.plan, base=snapshot)

    def _build_due(self) -> tuple[IndexPlan, str, bool] | None:
        """The plan, the reason and whether to train afresh, when a build is due."""
        serving = self._serving
        plan = serving.generation.plan
        if self._asked is not None:
            return plan, "asked for", self._asked
        wanted = self._wanted_plan()
        reason = rebuild_reason(plan, wanted, self._live.count)
        if reason is not None:
            return wanted, reason, True
        main = serving.generation.main
        with self._lock.reading():
            in_delta = serving.delta.ntotal
        dead = main.ntotal + in_delta - self._live.count
        if dead > max(100, main.ntotal // 10):
            return plan, f"{dead} deleted vectors to drop", False
        if in_delta >= self._delta_limit(serving.delta):
            return plan, f"{in_delta} recent additions to merge", False
        return None

    def _run_builds(self) -> None:
        faiss.omp_set_num_threads(1)  # this thread's OpenMP teams only: searches keep the rest
        lower_this_threads_priority(19)
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing.is_set():
                return
            due = self._build_due()
            if due is None:
                continue
            self._asked = None
            try:
                self._build_and_swap(*due)
                self._wake.set()  # another may be due already: look again
            except BuildCancelled:
                return
            except Exception as exc:  # the index in use keeps serving; retried later
                if self._closing.is_set():
                    return  # the store closed under it: nothing to report
                log.exception("background index build failed (%s)", due[1])
                self._last_build_error = f"{type(exc).__name__}: {exc}"
                if self._closing.wait(BUILD_RETRY_S):
                    return
                self._wake.set()

    def _build_and_swap(self, plan: IndexPlan, reason: str, fresh: bool) -> None:
        with self._build_lock:
            self._building = reason
            try:
                base = None if fresh else self._serving.generation
                generation = self._build(plan, base=base)
                delta = self._delta_for(generation)
                upto = generation.watermark
                while True:  # most of the catch-up, while writes go on
                    upto, added = self._catch_up(delta, upto)
                    if added < FINAL_CATCH_UP:
                        break
                with self._apply:  # the rest, with writes held for a moment
                    self._catch_up(delta, upto)
                    with self._lock.writing():
                        self._serving = _Serving(generation, delta)
                self._last_build_error = None
                log.info("index swapped in (%s): %s", reason, generation.plan.reason)
            finally:
                self._building = None

    def _build(self, plan: IndexPlan, *, base: Generation | None) -> Generation:
        generation = build(
            self.store,
            plan,
            self._live,
            base=base,
            ef_search=self._ef_search,
            cancelled=self._closing.is_set,
        )
        if self._closing.is_set():
            raise BuildCancelled  # the files may belong to the next process already
        self._write_snapshot(generation)  # before it serves: nothing writes to it any more
        return generation

    def _delta_for(self, generation: Generation) -> VectorIndex:
        main = generation.main
        if main.nlist:  # the same trained lists and codes: cheap to add to and to search
            return main.empty_like()
        return VectorIndex.create(self.d, FLAT)

    def _catch_up(self, delta: VectorIndex, after: int) -> tuple[int, int]:
        """Add the store's labels above `after` to a delta nobody searches yet (or under the
        lock); returns the last label added and how many."""
        added = 0
        for labels, vectors in self.store.vectors(after=after):
            if delta is self._serving.delta:
                with self._lock.writing():
                    delta.add(labels, vectors)
            else:
                delta.add(labels, vectors)
            added += len(labels)
            after = int(labels[-1])
        return after, added

    # --- disk -------------------------------------------------------------------------------

    def _write_snapshot(self, generation: Generation) -> None:
        """Write a generation atomically; it replaces the previous one on disk.

        The FAISS file is written under a new name first; the small JSON header that names
        it is the commit point, replaced atomically. A crash at any moment leaves either the
        old snapshot or the new one, and the store has every label above its watermark.
        """
        data_name = f"index-{generation.watermark}.faiss"
        temporary_data = self.directory / f"{data_name}.tmp"
        generation.main.write(temporary_data)
        _fsync_file(temporary_data)
        os.replace(temporary_data, self.directory / data_name)
        header = SnapshotHeader(
            format=FORMAT,
            watermark=generation.watermark,
            d=self.d,
            factory=self.factory,
            fingerprint=self.fingerprint,
            plan=generation.plan,
            data=data_name,
        )
        temporary = self._header_path.with_suffix(".tmp")
        temporary.write_text(header.model_dump_json())
        _fsync_file(temporary)
        os.replace(temporary, self._header_path)
        _fsync_directory(self.directory)
        for old in self.directory.glob("index-*.faiss*"):
            if old.name != data_name:
                old.unlink(missing_ok=True)

    def _load_snapshot(self) -> Generation | None:
        if not self._header_path.exists():
            return None
        try:
            header = read_header(self._header_path)
        except (UnreadableHeader, OSError) as exc:  # the store holds every item
            log.warning("index snapshot unreadable (%s); rebuilding", exc)
            return None
        if not header.built_for(self.d, self.factory, self.fingerprint):
            log.info("index snapshot is for other settings %s; rebuilding", header)
            return None
        data = self.directory / header.data
        try:
            main = VectorIndex.read(data, self.d, ef_search=self._ef_search)
        except (RuntimeError, OSError) as exc:  # FAISS raises RuntimeError for a damaged file
            log.warning("index snapshot %s unreadable (%s); rebuilding", data, exc)
            return None
        plan = header.plan
        if plan.nprobe and plan.factory != FLAT and self.factory != AUTO:
            plan = replace(plan, nprobe=self._nprobe)
        return Generation(main, plan, header.watermark)

    def _read_live_items(self) -> None:
        for rows in self.store.labels_and_metadata():
            labels = np.array([row[0] for row in rows], np.int64)
            self._live.set_many(labels)
            for label, metadata in rows:
                self._postings.add(int(label), json.loads(metadata))


class IndexInUse(RuntimeError):
    """Another process has this collection open; two writers would diverge."""


def hold_process_lock(path: Path) -> IO[str]:
    """An exclusive flock for this process's lifetime (released by the OS even on kill -9)."""
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise IndexInUse(
            f"the index in {path.parent} is open in {holder}; stop it first (the index has "
            "one writer), or add items over HTTP"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
