"""A FAISS index over a cohort's dense embeddings: cosine top-k across the whole cohort or within one case.

Vectors are stored L2-normalised as float32, so the inner product FAISS ranks by is the cosine similarity. The
index kind follows the size (FAISS wiki, "Guidelines to choose an index"; Jégou et al., "Product quantization
for nearest neighbor search", TPAMI 2011):

- ``flat``: exact ``IndexFlatIP`` up to ``EXACT_MAX_VECTORS`` (each query scans every vector);
- ``ivf`` (the default above that): ``IndexIVFFlat``, k-means cells searched ``nprobe`` at a time, exact scores;
- ``hnsw``: ``IndexHNSWFlat``, a graph; on request (faster per query, slower to build on few cores, and the
  graph must be walked far to search one small case);
- ``ivfpq``: ``IndexIVFPQ``, vectors compressed to a few bytes, when float32 vectors would not fit the memory
  budget. Where one byte per dimension still fits, an 8-bit scalar-quantised copy of each vector re-ranks the
  PQ candidates (``IndexRefine``): PQ alone ranks by approximate scores, so probing more lists soon stops raising
  its recall.

The build measures recall@10 against exact search on a seeded sample of the indexed vectors and raises
``nprobe`` / ``efSearch`` until it reaches ``target_recall`` (IVF-PQ: until compression, not probing, limits it);
kind, parameters and recall go into the metadata.
Each case's vectors get a contiguous id range (``locate`` maps ids back), so searching within one case is a
FAISS ``IDSelectorRange``. On disk an index is a folder with ``index.faiss`` and ``metadata.json``, the latter
written last: a folder without valid metadata is never taken for an index.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

import alice
from alice.atomic import atomic_write, atomic_write_text
from alice.errors import InputError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: IVF-PQ indexes re-rank with 8-bit codes
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.json"
KINDS = ("flat", "ivf", "hnsw", "ivfpq")
CASE_KEYS = {"case_id", "content_key", "start", "stop"}
METRIC = "cosine: inner product of L2-normalised float32 vectors"
# IVF over HNSW as the default: a build of k-means plus one assignment per vector is minutes, not tens of minutes,
# on two cores; each inverted list keeps its ids in order, so searching one case is a binary search per list.
APPROXIMATE_KIND = "ivf"
# One exact query reads every vector (512 bytes each at 128-d): about 5 ms at this size on one busy 2-core machine
# (bench/bench_index.py measured 24 ms at 100k); above it an approximate index answers in well under 1 ms.
EXACT_MAX_VECTORS = 20_000
# Share of the available RAM the float32 vectors may take before the index is compressed (IVF-PQ).
MEMORY_FRACTION = 0.25
RECALL_K = 10
RECALL_QUERIES = 1000
# The goal is 0.95 on new queries; the recall measured on 1000 sampled vectors is within about +-0.01 of it.
TARGET_RECALL = 0.96
# IVF: about sqrt(N) cells (1M -> 1024, 10M -> 4096). More cells cost N x nlist in the assignment at build time.
MAX_NLIST = 4096
TRAIN_POINTS_PER_LIST = 64
# ... but at least enough for the 256 centroids of each 8-bit PQ sub-quantizer (FAISS samples 256 per centroid).
MIN_TRAIN_POINTS = 256 * 256
# IVF-PQ: one byte per 4 dimensions (32 bytes for 128-d); the stop rule when more probing no longer helps.
PQ_DIMS_PER_BYTE = 4
# IVF-PQ with re-ranking: the PQ stage returns this many times k candidates for the 8-bit codes to re-rank.
REFINE_K_FACTOR = 16
PQ_SATURATION = 0.005
# IVF-PQ probes at most this share of its lists: past it, scanning codes costs more than the recall it gains.
PQ_MAX_PROBE_SHARE = 1 / 16
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
# Vectors converted to float32 at a time while adding or scanning (128 MB at 128-d).
CHUNK_ROWS = 1 << 18


@dataclass(frozen=True, eq=False)
class IndexPart:
    """One case's vectors for the index.

    Attributes:
        case_id: the case they come from.
        content_key: identifies the case's content (e.g. its image hash); a changed key makes the index stale.
        vectors: (N, D) float32 or float16 unit rows; row r gets id ``start + r`` in the index.
    """

    case_id: str
    content_key: str
    vectors: np.ndarray


def available_memory_bytes() -> int:
    """RAM available to new allocations (``MemAvailable``), or free pages where /proc is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget(memory_budget_bytes: int | None = None) -> float:
    """Bytes the index's vectors may take: as given, or ``MEMORY_FRACTION`` of the available RAM."""
    return MEMORY_FRACTION * available_memory_bytes() if memory_budget_bytes is None else memory_budget_bytes


def choose_kind(n_vectors: int, dim: int, exact_max_vectors: int = EXACT_MAX_VECTORS,
                memory_budget_bytes: int | None = None) -> str:
    """The index kind for a size: ``ivfpq`` when float32 vectors exceed the ``memory_budget``, else ``flat`` up to
    ``exact_max_vectors``, else ``APPROXIMATE_KIND``."""
    if n_vectors * dim * 4 > memory_budget(memory_budget_bytes):
        return "ivfpq"
    return "flat" if n_vectors <= exact_max_vectors else APPROXIMATE_KIND


def build_index(parts: Sequence[IndexPart], source_key: str, *, kind: str | None = None,
                exact_max_vectors: int = EXACT_MAX_VECTORS, memory_budget_bytes: int | None = None,
                target_recall: float = TARGET_RECALL, recall_queries: int = RECALL_QUERIES,
                seed: int = 0) -> CohortIndex:
    """Index the parts (one per case, ids contiguous in the given order) and measure its recall@10.

    Args:
        parts: the cases' vectors, all of one dimension.
        source_key: identifies the checkpoint and embedding settings the vectors come from.
        kind: one of ``KINDS``; by default ``choose_kind`` decides.
        exact_max_vectors, memory_budget_bytes: passed to ``choose_kind``; the budget also decides whether
            IVF-PQ keeps 8-bit codes to re-rank with.
        target_recall: search parameters are raised until recall@10 on the sample reaches this.
        recall_queries: how many indexed vectors (a seeded sample) serve as queries to measure recall.
        seed: seeds the training and recall samples.

    Raises:
        InputError: no parts, a case given twice, vectors that are not (N, D) float arrays, mixed dimensions,
            or non-finite values.
    """
    dim, cases = _check_parts(parts)
    n = cases[-1]["stop"]
    budget = memory_budget(memory_budget_bytes)
    kind = kind or choose_kind(n, dim, exact_max_vectors, budget)
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    index, params = _make_index(kind, dim, n, refine=n * dim <= budget)  # 8-bit re-ranking codes where they fit
    if not index.is_trained:
        train_ids = rng.choice(n, _train_size(n, params["nlist"]), replace=False)
        index.train(_gather(parts, np.sort(train_ids)))
    for part in parts:
        for lo in range(0, len(part.vectors), CHUNK_ROWS):
            index.add(_unit_rows(part.vectors[lo:lo + CHUNK_ROWS], f"case {part.case_id}"))
    build_seconds = time.perf_counter() - start

    sample = np.sort(rng.choice(n, min(n, recall_queries), replace=False))
    start = time.perf_counter()
    params, recall, tried = _tune(index, kind, params, parts, _gather(parts, sample), target_recall)
    metadata = {
        "format_version": FORMAT_VERSION, "kind": kind, "params": params, "metric": METRIC,
        "dim": dim, "n_vectors": n, "source_key": source_key, "cases": cases,
        f"recall_at_{RECALL_K}": recall, "target_recall": target_recall, "recall_queries": len(sample),
        "recall_sample": f"indexed vectors drawn with seed {seed}, searched against exact search", "tuning": tried,
        "build_seconds": round(build_seconds, 3), "tune_seconds": round(time.perf_counter() - start, 3),
        "bytes_per_vector": round(faiss.serialize_index(index).nbytes / max(n, 1), 2),
        "faiss_version": faiss.__version__, "alice_version": alice.__version__,
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    log.info("built a %s index of %d %d-d vectors (%s) in %.1f s, recall@%d %.3f", kind, n, dim, params,
             build_seconds, RECALL_K, recall)
    return CohortIndex(index, metadata)


class CohortIndex:
    """A built or loaded index with its metadata (kind, parameters, recall, each case's id range)."""

    def __init__(self, index: faiss.Index, metadata: dict, folder: Path | None = None):
        self.index = index
        self.metadata = metadata
        self.folder = folder
        self.case_ids = [case["case_id"] for case in metadata["cases"]]
        self._starts = np.array([case["start"] for case in metadata["cases"]], dtype=np.int64)
        self._stops = np.array([case["stop"] for case in metadata["cases"]], dtype=np.int64)

    @property
    def kind(self) -> str:
        return self.metadata["kind"]

    @property
    def dim(self) -> int:
        return self.metadata["dim"]

    @property
    def n_vectors(self) -> int:
        return self.metadata["n_vectors"]

    @property
    def source_key(self) -> str:
        return self.metadata["source_key"]

    def case_range(self, case_id: str) -> tuple[int, int]:
        """The ids ``[start, stop)`` of a case's vectors."""
        if case_id not in self.case_ids:
            raise InputError(self.folder, f"no case {case_id!r} in this index (it holds {_names(self.case_ids)})")
        i = self.case_ids.index(case_id)
        return int(self._starts[i]), int(self._stops[i])

    def search(self, queries: np.ndarray, k: int = RECALL_K, case_id: str | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The top-k cosine matches of each query, over the whole cohort or within one case.

        Args:
            queries: (Q, D) vectors (normalised here), or one (D,) vector.
            k: matches per query.
            case_id: search only this case's vectors.

        Returns:
            scores (Q, k) float32 cosines, best first, and ids (Q, k) int64; id -1 and score -inf where fewer
            than k vectors were found.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = self._check_queries(queries)
        params, selector = dict(self.metadata["params"]), None
        if case_id is not None:
            start, stop = self.case_range(case_id)
            if start == stop:
                return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
            # IVF lists hold ids in increasing order, so the range is found by bisection in each list.
            selector = faiss.IDSelectorRange(start, stop, True)
            params = _widened(self.kind, params, (stop - start) / self.n_vectors, self.n_vectors)
        scores, ids = self.index.search(queries, k, params=_search_parameters(self.kind, params, selector))
        scores[ids < 0] = -np.inf
        return scores, ids

    def search_per_case(self, queries: np.ndarray, exclude_case: str | None = None, k: int = 1
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The top-k matches of each query in every case (but ``exclude_case``): ``{case_id: (scores, ids)}``."""
        if exclude_case is not None:
            self.case_range(exclude_case)  # a misspelt case would otherwise exclude nothing
        return {case_id: self.search(queries, k, case_id) for case_id in self.case_ids if case_id != exclude_case}

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The case id and row within that case's part of each id, same shape as ``ids``; ``""`` and -1 for -1."""
        ids = np.asarray(ids, dtype=np.int64)
        if np.any(ids >= self.n_vectors) or np.any(ids < -1):
            raise ValueError(f"ids must lie in [0, {self.n_vectors}) or be -1")
        which = np.minimum(np.searchsorted(self._stops, ids, side="right"), len(self.case_ids) - 1)
        missing = ids < 0
        case_ids = np.array(self.case_ids + [""])[np.where(missing, len(self.case_ids), which)]
        return case_ids, np.where(missing, -1, ids - self._starts[which])

    def save(self, folder: str | Path) -> Path:
        """Write ``index.faiss`` then ``metadata.json`` into a folder, each atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / METADATA_FILE).unlink(missing_ok=True)  # the old metadata must not vouch for the new index
        atomic_write(folder / INDEX_FILE, lambda tmp: faiss.write_index(self.index, str(tmp)))
        atomic_write_text(folder / METADATA_FILE, json.dumps(self.metadata, indent=1) + "\n")
        self.folder = folder
        return folder

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.atleast_2d(np.asarray(queries))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError(self.folder, f"queries of shape {queries.shape} do not fit an index of {self.dim}-d "
                                          f"vectors (built from {self.source_key!r})")
        return _unit_rows(queries, "queries")


def read_metadata(folder: str | Path) -> dict:
    """An index folder's metadata, checked (without reading the index itself).

    Raises:
        InputError: missing (an unfinished build), unreadable, another format version, or inconsistent.
    """
    folder = Path(folder)
    path = folder / METADATA_FILE
    if not path.is_file():
        raise InputError(folder, f"no {METADATA_FILE}: not an index folder, or its build did not finish; "
                                 "rebuild the index")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(folder, f"{METADATA_FILE} cannot be read ({exc}); rebuild the index") from None
    problem = _metadata_problem(metadata)
    if problem:
        raise InputError(folder, f"{METADATA_FILE} {problem}; rebuild the index")
    return metadata


def load_index(folder: str | Path, source_key: str | None = None) -> CohortIndex:
    """Read an index folder; with ``source_key``, refuse an index built from another checkpoint or settings.

    Raises:
        InputError: metadata missing or damaged, ``index.faiss`` unreadable or not matching the metadata, or
            another source.
    """
    folder = Path(folder)
    metadata = read_metadata(folder)
    if source_key is not None and metadata["source_key"] != source_key:
        raise InputError(folder, f"built from checkpoint/settings {metadata['source_key']!r}, asked for "
                                 f"{source_key!r}; rebuild the index from those embeddings (load_or_build)")
    try:
        index = faiss.read_index(str(folder / INDEX_FILE))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(folder, f"{INDEX_FILE} cannot be read ({reason}); rebuild the index") from None
    if index.ntotal != metadata["n_vectors"] or index.d != metadata["dim"]:
        raise InputError(folder, f"{INDEX_FILE} holds {index.ntotal} {index.d}-d vectors but {METADATA_FILE} "
                                 f"describes {metadata['n_vectors']} {metadata['dim']}-d; rebuild the index")
    return CohortIndex(index, metadata, folder)


def stale_reason(metadata: dict, source_key: str, case_keys: dict[str, str]) -> str | None:
    """Why an index no longer fits the cohort (``{case_id: content_key}``) and source, or None if it does."""
    if metadata.get("format_version") != FORMAT_VERSION:
        return f"index format {metadata.get('format_version')}, this version writes {FORMAT_VERSION}"
    if metadata["source_key"] != source_key:
        return f"built from {metadata['source_key']!r}, asked for {source_key!r}"
    indexed = {case["case_id"]: case["content_key"] for case in metadata["cases"]}
    changes = {"cases added": [c for c in case_keys if c not in indexed],
               "cases removed": [c for c in indexed if c not in case_keys],
               "cases changed": [c for c in case_keys if c in indexed and indexed[c] != case_keys[c]]}
    return "; ".join(f"{what}: {_names(names)}" for what, names in changes.items() if names) or None


def load_or_build(folder: str | Path, parts: Sequence[IndexPart], source_key: str, **build_options) -> CohortIndex:
    """The index in ``folder`` if it fits the parts and source; otherwise build it (logging why) and save it.

    ``build_options`` go to ``build_index`` (they do not make an existing index stale).
    """
    folder = Path(folder)
    case_keys = {part.case_id: part.content_key for part in parts}
    if not (folder / METADATA_FILE).exists() and not (folder / INDEX_FILE).exists():
        reason = "no index yet"
    else:
        try:
            reason = stale_reason(read_metadata(folder), source_key, case_keys)
            if reason is None:
                return load_index(folder, source_key)
        except InputError as exc:
            reason = exc.problem
    log.info("building the index in %s: %s", folder, reason)
    index = build_index(parts, source_key, **build_options)
    index.save(folder)
    return index


def exact_top_k(parts: Sequence[IndexPart], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k over the parts, a chunk at a time (ids as ``build_index`` numbers them)."""
    queries = _unit_rows(queries, "queries")
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    offset = 0
    for part in parts:
        for lo in range(0, len(part.vectors), CHUNK_ROWS):
            chunk = _unit_rows(part.vectors[lo:lo + CHUNK_ROWS], f"case {part.case_id}")
            scores, ids = faiss.knn(queries, chunk, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, np.where(ids >= 0, ids + offset + lo, -1))
        offset += len(part.vectors)
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k ids (-1 ignored) that were found."""
    hits = [np.isin(t[t >= 0], f).mean() if np.any(t >= 0) else 1.0 for f, t in zip(found, truth)]
    return float(np.mean(hits))


def _check_parts(parts: Sequence[IndexPart]) -> tuple[int, list[dict]]:
    """The common dimension and each case's id range, or InputError."""
    if not parts:
        raise InputError(None, "nothing to index: no parts were given")
    cases, dims, start = [], {}, 0
    for part in parts:
        v = part.vectors
        if not isinstance(v, np.ndarray) or v.ndim != 2 or v.dtype not in (np.float16, np.float32):
            raise InputError(None, f"case {part.case_id}: vectors must be an (N, D) float16 or float32 array, got "
                                   f"{getattr(v, 'dtype', type(v).__name__)} of shape {getattr(v, 'shape', '?')}")
        if part.case_id in dims:
            raise InputError(None, f"case {part.case_id} is given twice")
        dims[part.case_id] = v.shape[1]
        cases.append({"case_id": part.case_id, "content_key": part.content_key, "start": start,
                      "stop": start + len(v)})
        start += len(v)
    if len(set(dims.values())) > 1:
        by_dim = {}
        for case_id, dim in dims.items():
            by_dim.setdefault(dim, []).append(case_id)
        listing = "; ".join(f"{dim}-d: {_names(ids)}" for dim, ids in by_dim.items())
        raise InputError(None, f"the parts have vectors of different dimensions ({listing}); one index holds the "
                               "embeddings of one checkpoint and setting")
    if start == 0:
        raise InputError(None, "nothing to index: every part is empty")
    return next(iter(dims.values())), cases


def _make_index(kind: str, dim: int, n: int, refine: bool = False) -> tuple[faiss.Index, dict]:
    """An empty index of a kind, and its build parameters; ``refine``: an IVF-PQ index re-ranks with 8-bit codes
    (other kinds ignore it)."""
    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index, {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    nlist = int(min(MAX_NLIST, 2 ** round(math.log2(math.sqrt(n)))))
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index, params = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT), {"nlist": nlist}
    else:
        m = max(d for d in range(1, dim // PQ_DIMS_PER_BYTE + 1) if dim % d == 0)
        # 8-bit codes need ~39 x 256 training points; small sets get fewer centroids per sub-vector.
        nbits = int(np.clip(math.floor(math.log2(_train_size(n, nlist) / 39)), 1, 8))
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        params = {"nlist": nlist, "pq_m": m, "pq_nbits": nbits, "refine": "SQ8" if refine else None}
    index.cp.spherical = True  # unit centroids, so the inner product assigns vectors to their nearest cell
    if kind == "ivfpq" and refine:
        codes = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefine(index, codes)  # trains and fills both stages
        params["k_factor"] = REFINE_K_FACTOR
    return index, params


def _train_size(n: int, nlist: int) -> int:
    return min(n, max(MIN_TRAIN_POINTS, TRAIN_POINTS_PER_LIST * nlist))


def _tune(index: faiss.Index, kind: str, params: dict, parts: Sequence[IndexPart], queries: np.ndarray,
          target_recall: float) -> tuple[dict, float, list[dict]]:
    """The smallest nprobe / efSearch reaching the target recall@10 (IVF-PQ: where more probing stops helping)."""
    if kind == "flat":
        return params, 1.0, []
    _, truth = exact_top_k(parts, queries, RECALL_K)
    if kind == "hnsw":
        name, values = "efSearch", HNSW_EF_SEARCH
    else:
        most = params["nlist"] * (PQ_MAX_PROBE_SHARE if kind == "ivfpq" else 1)
        name, values = "nprobe", [2 ** i for i in range(int(math.log2(max(most, 1))) + 1)]
    key = f"recall_at_{RECALL_K}"
    tried = []
    for value in values:
        trial = {**params, name: value}
        _, found = index.search(queries, RECALL_K, params=_search_parameters(kind, trial, None))
        recall = round(recall_at_k(found, truth), 4)
        if kind == "ivfpq" and tried and recall - tried[-1][key] < PQ_SATURATION:
            break  # compression, not probing, limits the recall now
        tried.append({name: value, key: recall})
        if recall >= target_recall:
            break
    best = tried[-1]
    return {**params, name: best[name]}, best[key], tried


def _search_parameters(kind: str, params: dict, selector: faiss.IDSelector | None) -> faiss.SearchParameters:
    if kind in ("ivf", "ivfpq"):
        ivf = faiss.SearchParametersIVF(sel=selector, nprobe=params["nprobe"])
        if params.get("refine"):  # the selector acts in the PQ stage, which picks the candidates
            return faiss.IndexRefineSearchParameters(k_factor=params["k_factor"], base_index_params=ivf)
        return ivf
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=params["efSearch"])
    return faiss.SearchParameters(sel=selector)


def _widened(kind: str, params: dict, fraction: float, n_vectors: int) -> dict:
    """Search parameters for one case holding ``fraction`` of the vectors: the probed cells (visited graph nodes)
    hold about that share of its vectors, so probing 1/fraction times wider keeps the recall of a global search."""
    if kind in ("ivf", "ivfpq"):
        return {**params, "nprobe": min(params["nlist"], math.ceil(params["nprobe"] / fraction))}
    if kind == "hnsw":
        return {**params, "efSearch": min(n_vectors, math.ceil(params["efSearch"] / fraction))}
    return params


def _unit_rows(vectors: np.ndarray, what: str) -> np.ndarray:
    """A float32 copy with L2-normalised rows; InputError on non-finite values."""
    rows = np.array(vectors, dtype=np.float32, order="C")
    if not np.all(np.isfinite(rows)):
        raise InputError(None, f"{what}: the vectors hold NaN or infinite values")
    faiss.normalize_L2(rows)
    return rows


def _gather(parts: Sequence[IndexPart], ids: np.ndarray) -> np.ndarray:
    """Unit float32 rows of the given sorted ids."""
    rows, start = [], 0
    for part in parts:
        stop = start + len(part.vectors)
        picked = ids[(ids >= start) & (ids < stop)] - start
        rows.append(_unit_rows(part.vectors[picked], f"case {part.case_id}"))
        start = stop
    return np.concatenate(rows)


def _names(names: Sequence[str], limit: int = 5) -> str:
    """A short listing: the first few names and how many more."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _metadata_problem(metadata: object) -> str | None:
    """What makes parsed metadata unusable, or None."""
    if not isinstance(metadata, dict):
        return "is not a JSON object"
    if metadata.get("format_version") != FORMAT_VERSION:
        return f"has format version {metadata.get('format_version')!r}; this version reads {FORMAT_VERSION}"
    missing = [key for key in ("kind", "params", "dim", "n_vectors", "source_key", "cases") if key not in metadata]
    if missing:
        return f"lacks {', '.join(missing)}"
    if metadata["kind"] not in KINDS:
        return f"names an unknown index kind {metadata['kind']!r}"
    cases = metadata["cases"]
    if not isinstance(cases, list) or not cases or \
            not all(isinstance(case, dict) and CASE_KEYS <= case.keys() for case in cases):
        return "has no case list or malformed case entries"
    starts, stops = [case["start"] for case in cases], [case["stop"] for case in cases]
    if starts != [0] + stops[:-1] or stops[-1] != metadata["n_vectors"] \
            or any(start > stop for start, stop in zip(starts, stops)):
        return "has case id ranges that do not tile the index"
    return None
