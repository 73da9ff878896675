"""Benchmark the cohort FAISS index on real SAM embeddings: single-query latency, recall@10, build, memory.

Run from the repository root on a quiet machine: ``python bench/bench_index.py`` (about half an hour on two
cores, about 5 GB of RAM). ``--quick`` runs small sizes as a check of the script and writes nothing to
RESULTS.md; ``--sizes A,B`` sets the sizes (A for the uncompressed approximate kinds, B for IVF-PQ);
``--kinds ivf,hnsw`` chooses the approximate kinds timed at size A. Every number in the written section is
measured by this script.

Vectors: the SAM local embeddings (128-d, one every 8 mm) of the sample cohort, from the embedding cache
(``alice.anatomy.cache.cached_embedding`` with ``alice.paths.sam_checkpoint()``). The maps hold fewer body voxels
than the sizes asked for, so every body grid vector is indexed and the rest are trilinearly interpolated at
seeded random sub-voxel positions inside the body and renormalised, as a denser embedding stride would give.
Queries are interpolated at other random positions (held out: not identical to any indexed vector).

- latency: ``CohortIndex.search`` of one query (batch size 1) for top-10, p50 / p95 over the queries;
- recall@10 of those queries against exact search over the same vectors;
- exact search at size A: one query on ``IndexFlatIP`` (p50) and the cost per query of a batched exact search;
- build seconds (training and adding; tuning nprobe/efSearch is separate), index bytes, process peak RSS.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, now, write_section  # noqa: E402  (bench/ is not a package)

SECTION = "## Cohort index: FAISS search latency, recall, build, memory (bench/bench_index.py)"
GOALS = {"approx_p50_ms": 5.0, "approx_recall": 0.95, "compressed_p50_ms": 20.0}
DEFAULT_SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (100_000, 200_000)
CHUNK = 1 << 18


def load_maps():
    """Each sample case's local map as (x, y, z, D) float32, and its body grid voxels (M, 3)."""
    import numpy as np

    from alice import paths
    from alice.anatomy.cache import cached_embedding
    from alice.data.cohort import sample_cohort

    maps = {}
    for record in sample_cohort().cases:
        embedding = cached_embedding(paths.sam_checkpoint(), record)
        local = np.ascontiguousarray(np.moveaxis(embedding.local_map, 0, -1), dtype=np.float32)
        body = embedding.local_in_body.numpy().reshape(local.shape[:3])
        maps[record.case_id] = (local, np.argwhere(body))
    return maps


def interpolate(local, body_ijk, count: int, rng):
    """Unit vectors trilinearly interpolated at random positions in body cells (corner voxel in the body), float16."""
    import numpy as np

    cells = body_ijk[np.all(body_ijk < np.array(local.shape[:3]) - 1, axis=1)]
    out = np.empty((count, local.shape[3]), np.float16)
    for lo in range(0, count, CHUNK):
        n = min(CHUNK, count - lo)
        base, frac = cells[rng.integers(0, len(cells), n)], rng.random((n, 3), dtype=np.float32)
        acc = np.zeros((n, local.shape[3]), np.float32)
        for corner in itertools.product((0, 1), repeat=3):
            weight = np.prod(np.where(corner, frac, 1 - frac), axis=1)
            ijk = base + np.array(corner)
            acc += weight[:, None] * local[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        acc /= np.linalg.norm(acc, axis=1, keepdims=True)
        out[lo:lo + n] = acc
    return out


def make_parts(maps, size: int, seed: int):
    """``size`` vectors in one float16 array, one IndexPart per case (shares by body voxel count), and how many
    are grid vectors."""
    import numpy as np

    from alice.explore.index import IndexPart

    rng = np.random.default_rng(seed)
    body_counts = np.array([len(ijk) for _, ijk in maps.values()])
    shares = rng.multinomial(size, body_counts / body_counts.sum())
    vectors = np.empty((size, next(iter(maps.values()))[0].shape[3]), np.float16)
    parts, start, n_grid = [], 0, 0
    for (case_id, (local, ijk)), share in zip(maps.items(), shares):
        grid = ijk[np.sort(rng.choice(len(ijk), min(share, len(ijk)), replace=False))]
        block = vectors[start:start + share]
        block[:len(grid)] = local[grid[:, 0], grid[:, 1], grid[:, 2]]
        block[len(grid):] = interpolate(local, ijk, share - len(grid), rng)
        parts.append(IndexPart(case_id, f"{case_id}:{share}", block))
        start, n_grid = start + share, n_grid + len(grid)
    return parts, n_grid


def make_queries(maps, count: int, seed: int):
    """Held-out queries: interpolated at fresh random positions, spread over the cases, float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shares = rng.multinomial(count, np.full(len(maps), 1 / len(maps)))
    return np.concatenate([interpolate(local, ijk, share, rng) for (local, ijk), share in zip(maps.values(), shares)
                           ]).astype(np.float32)


def single_query_ms(search, queries, warmup: int = 20):
    """Per-query milliseconds, one query at a time."""
    for q in queries[:warmup]:
        search(q[None])
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None])
        times.append((time.perf_counter() - start) * 1000)
    return times


def rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(parts, queries, truth, kind: str, source_key: str) -> dict:
    """Build one index and time single queries, global and within one case."""
    import numpy as np

    from alice.explore.index import build_index, recall_at_k

    rss_before = rss_bytes("VmRSS")
    start = time.perf_counter()
    index = build_index(parts, source_key, kind=kind)
    wall = time.perf_counter() - start
    meta = index.metadata
    latency = single_query_ms(lambda q: index.search(q, 10), queries)
    _, found = index.search(queries, 10)
    case_id = max(parts, key=lambda p: len(p.vectors)).case_id
    case_latency = single_query_ms(lambda q: index.search(q, 10, case_id), queries[:200])
    result = {"kind": kind, "params": meta["params"], "n_vectors": meta["n_vectors"],
              "build_s": meta["build_seconds"], "tune_s": meta["tune_seconds"], "build_wall_s": round(wall, 1),
              "bytes_per_vector": meta["bytes_per_vector"], "index_bytes": int(meta["bytes_per_vector"] *
                                                                                meta["n_vectors"]),
              "rss_growth_bytes": rss_bytes("VmRSS") - rss_before,
              "recall_at_10_indexed_sample": meta["recall_at_10"], "recall_at_10": round(recall_at_k(found, truth), 4),
              "nearest_in_top_10": float(np.mean([t[0] in f for f, t in zip(found, truth)])),
              "p50_ms": float(np.median(latency)), "p95_ms": float(np.percentile(latency, 95)),
              "case_id": case_id, "case_p50_ms": float(np.median(case_latency))}
    return result


def exact_figures(parts, queries) -> dict:
    """Exact search: batched over the parts (the ground truth), and single queries on an IndexFlatIP."""
    import faiss
    import numpy as np

    from alice.explore.index import exact_top_k

    start = time.perf_counter()
    _, truth = exact_top_k(parts, queries, 10)
    figures = {"batched_ms_per_query": (time.perf_counter() - start) * 1000 / len(queries)}
    n = sum(len(p.vectors) for p in parts)
    if n * queries.shape[1] * 4 < 2**31:  # a float32 copy of up to 2 GB for single exact queries
        flat = faiss.IndexFlatIP(queries.shape[1])
        for part in parts:
            for lo in range(0, len(part.vectors), CHUNK):
                chunk = part.vectors[lo:lo + CHUNK].astype(np.float32)
                faiss.normalize_L2(chunk)
                flat.add(chunk)
        figures["single_p50_ms"] = float(np.median(single_query_ms(lambda q: flat.search(q, 10), queries[:50], 5)))
        del flat
    return figures, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="A,B: vectors for the approximate kinds and for IVF-PQ")
    parser.add_argument("--kinds", default="ivf,hnsw", help="approximate kinds timed at size A (ivf, hnsw)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 300 queries, nothing written")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import faiss

    from alice import paths
    from alice.anatomy.cache import content_hash
    from alice.explore.index import choose_kind

    size_a, size_b = QUICK_SIZES if args.quick else tuple(int(s) for s in args.sizes.split(","))
    n_queries = 300 if args.quick else args.queries
    source_key = f"bench:sam-local:{content_hash(paths.sam_checkpoint())[:16]}"
    maps = load_maps()
    n_body = sum(len(ijk) for _, ijk in maps.values())
    queries = make_queries(maps, n_queries, seed=1)
    report = {"machine": machine(), "date": now(), "faiss": faiss.__version__, "cases": len(maps),
              "body_grid_vectors": n_body, "queries": n_queries, "runs": []}

    for size, kinds in ((size_a, args.kinds.split(",")), (size_b, ["ivfpq"])):
        parts, n_grid = make_parts(maps, size, seed=0)
        exact, truth = exact_figures(parts, queries)
        for kind in kinds:
            run = measure(parts, queries, truth, kind, source_key)
            run.update(grid_vectors=n_grid, exact=exact, default_kind_here=choose_kind(size, queries.shape[1]))
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
        del parts
    report["peak_rss_bytes"] = rss_bytes("VmHWM")
    print(json.dumps(report, indent=1))
    text = section(args, report)
    print(text)
    if not args.quick:
        write_section(SECTION, text)


def section(args, report: dict) -> str:
    rows = []
    for run in report["runs"]:
        n, params = f"{run['n_vectors']:,}", ", ".join(f"{k} {v}" for k, v in run["params"].items())
        what = f"{n} vectors, `{run['kind']}` ({params})"
        rows += [(f"{what}: one query, top-10, p50 / p95 of {report['queries']}",
                  f"{run['p50_ms']:.2f} ms / {run['p95_ms']:.2f} ms"),
                 (f"{what}: recall@10 of the held-out queries vs exact (build's own sample of indexed vectors)",
                  f"{run['recall_at_10']:.3f} ({run['recall_at_10_indexed_sample']:.3f})"),
                 (f"{what}: share of held-out queries whose exact nearest vector is in the top-10",
                  f"{run['nearest_in_top_10']:.3f}"),
                 (f"{what}: one query within one case ({run['case_id']}), p50", f"{run['case_p50_ms']:.2f} ms"),
                 (f"{what}: build (train + add) / tuning of the search parameters",
                  f"{run['build_s']:.1f} s / {run['tune_s']:.1f} s"),
                 (f"{what}: index size (bytes per vector)",
                  f"{run['index_bytes']:,} B ({run['bytes_per_vector']:.1f} B)")]
        exact = run["exact"]
        if "single_p50_ms" in exact:
            rows.append((f"{n} vectors, exact `IndexFlatIP`: one query, p50 of 50", f"{exact['single_p50_ms']:.1f} ms"))
        rows.append((f"{n} vectors, exact, batched ({report['queries']} queries): cost per query",
                     f"{exact['batched_ms_per_query']:.2f} ms"))
    rows = list(dict.fromkeys(rows))  # the exact rows repeat when several kinds share a size
    goals = []
    for run in report["runs"]:
        if run["kind"] == "ivfpq":
            ok = run["p50_ms"] <= GOALS["compressed_p50_ms"]
            goals.append(f"{run['n_vectors']:,} IVF-PQ p50 <= {GOALS['compressed_p50_ms']:g} ms: "
                         f"{'met' if ok else 'MISSED'} ({run['p50_ms']:.2f} ms, "
                         f"{run['bytes_per_vector']:.1f} B/vector)")
        else:
            ok = run["p50_ms"] <= GOALS["approx_p50_ms"] and run["recall_at_10"] >= GOALS["approx_recall"]
            goals.append(f"{run['n_vectors']:,} `{run['kind']}` p50 <= {GOALS['approx_p50_ms']:g} ms with recall@10 "
                         f">= {GOALS['approx_recall']:g}: {'met' if ok else 'MISSED'} ({run['p50_ms']:.2f} ms, "
                         f"{run['recall_at_10']:.3f})")
    first = report["runs"][0]
    sizes = "; ".join(dict.fromkeys(f"{run['n_vectors']:,}: {run['grid_vectors']:,} grid vectors"
                                    for run in report["runs"]))
    lines = [SECTION, "", f"- Command: `{' '.join(['python', 'bench/bench_index.py', *sys.argv[1:]])}`",
             f"- Date: {report['date']}", f"- Machine: {report['machine']}; faiss {report['faiss']}", "",
             (f"Vectors: real SAM embeddings (local map, 128-d, 8 mm grid) of the {report['cases']} sample cases, "
             f"which hold {report['body_grid_vectors']:,} body grid vectors: a seeded sample of those (all of them "
             "at larger sizes), the rest real SAM embeddings trilinearly interpolated between grid points at seeded "
             f"random positions in the body and renormalised ({sizes}). Queries: {report['queries']} vectors "
             "interpolated at other random positions (held out). Single queries (batch size 1) with FAISS's own "
             f"threads; peak RSS of the bench process {report['peak_rss_bytes'] / 2**30:.1f} GiB. On this machine "
             f"`choose_kind` picks `{first['default_kind_here']}` at {first['n_vectors']:,} vectors."), "",
             "| measure | result |", "|---|---|", *(f"| {m} | {r} |" for m, r in rows), "",
             "Goals on 2 cores: " + "; ".join(goals) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
