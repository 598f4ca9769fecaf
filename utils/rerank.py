"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017) in memory that grows with the number of items.

The usual implementations (the authors', fast-reid's ``re_ranking``, torchreid's) build
several dense (Q+G) x (Q+G) matrices; at 20,000 queries and 100,000 photos that is
hundreds of GB. Here only each item's nearest neighbours, its k-reciprocal expansion and
the sparse weights are kept; similarities are computed block by block and reduced at once
to those lists. The answer is the dense algorithm's with ties ordered by item number
(fast-reid's ``re_ranking`` called with the Euclidean distances of the same features;
tested to 1e-5).

Public functions:

* ``k_reciprocal_rerank(query_feats, gallery_feats, k1, k2, lambda_value)`` -> [Q, G]
  re-ranked distance; ``k_reciprocal_rerank_chunks(...)`` yields it a block of query rows
  at a time, for problems whose [Q, G] output does not fit.
* ``gallery_neighbours(gallery_feats, k1)`` -> a dict of tensors computed once per gallery
  (the expensive G x G neighbour search), and ``rerank_queries(query_feats, gallery_feats,
  neighbours, k2, lambda_value)`` / ``rerank_queries_chunks(...)``, which re-rank new
  queries against it. ``rerank_queries(q, g, gallery_neighbours(g, k1), k2, lam)`` equals
  ``k_reciprocal_rerank(q, g, k1, k2, lam)`` (the latter is built on the former).

The algorithm, as in the dense reference. Items are numbered queries first (0..Q-1), then
the gallery (Q..Q+G-1); all Q+G items are nodes of one neighbour graph.

1. d(i, j) = ||x_i - x_j||^2 = 2 - 2 <x_i, x_j> (unit-norm features), and each row is
   divided by its largest value over all Q+G items: b(i, j) = d(i, j) / max_k d(i, k).
2. N(i, k): the k+1 items with the smallest b(i, .) (i itself included), ties by number.
   R(i) = {j in N(i, k1) : i in N(j, k1)} (k-reciprocal neighbours).
3. Expansion: for each c in R(i), R_half(c) (the same with round(k1 / 2), rounded half to
   even) is added when more than 2/3 of it lies in R(i); E(i) = the union.
4. V(i, j) = exp(-b(i, j)) / sum over E(i) of exp(-b(i, .)), for j in E(i); 0 elsewhere.
5. Query expansion (k2 > 1): V(i) <- mean of V over the first k2 items of N(i, k1).
6. Jaccard distance 1 - t / (2 - t), t(i, j) = sum_k min(V(i, k), V(j, k)), and the result
   (1 - lambda) * jaccard + lambda * b(q, g).

Exactness. Distances are defined as float32 roundings of float64 inner products, so that
every block and every gathered pair computes the same value for the same pair. Neighbour
lists are found with float32 matrix products (fast), then checked: the candidates' exact
distances are recomputed, and a row is redone exactly from all of its distances unless the
last kept neighbour is provably nearer than anything left out. Ties are ordered by item
number. numpy's argsort in the dense reference orders exact ties arbitrarily, and ties of
the float32 b are not only duplicates: among thousands of items some rows hold two equal
values where a list ends, and the items near them then differ from the reference's by up
to about 1e-2 (at 3,368 x 15,913; with a stable argsort the reference agrees to 3e-7).
"""
from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator

import torch

from utils.precision import full_float32

__all__ = ["k_reciprocal_rerank", "k_reciprocal_rerank_chunks", "gallery_neighbours",
           "rerank_queries", "rerank_queries_chunks", "check_parameters", "dense_bytes"]

# Neighbours kept beyond the k1 + 1 of a list: the room that lets a list be merged with
# new items (queries) and still be proved complete.
MARGIN = 8
# Float32 candidates taken beyond those kept, and candidates for a row's largest distance.
_APPROX_EXTRA = 8
_FARTHEST = 4
# Scratch memory of one dense block (a block of rows against every item).
_BLOCK_BYTES = 64 * 2**20
# Entries expanded at a time in the sparse steps.
_SPARSE_ENTRIES = 1 << 22
# Relative gap that keeps two distances apart after both are divided by the same row
# maximum and rounded to float32 (each rounding moves a value by at most 2**-24).
_SLACK = 2.0 ** -19


# ----------------------------------------------------------------------------------------
# The stored gallery, and re-ranking of queries against it.
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def gallery_neighbours(gallery_feats: torch.Tensor, k1: int = 20, *,
                       expansions: bool = True) -> dict:
    """What re-ranking needs of a gallery alone, computed once (the G x G neighbour search,
    the expensive part) and reused for any number of queries by ``rerank_queries``.

    Args:
        gallery_feats: [G, D] L2-normalised features (float32, float16 or bfloat16, CPU or
            CUDA); the same tensor must be given to ``rerank_queries``.
        k1: the k1 of the re-ranking (>= 1); ``rerank_queries`` uses this one.
        expansions: also store each item's k-reciprocal expansion over the gallery alone
            (the "weights"), so that ``rerank_queries`` recomputes only the items whose
            neighbourhood a query enters. False saves that memory and time when every
            item will be recomputed anyway (many queries at once).

    Returns a dict of plain values and tensors on the features' device (``torch.save``
    keeps it; ``torch.load(weights_only=True)`` reads it back). With K = min(k1 + 1 +
    MARGIN, G) and d(i, j) = ||g_i - g_j||^2 as a float32:

    * ``"k1"`` (int), ``"gallery_size"`` (int G), ``"dim"`` (int D);
    * ``"indices"``: [G, K] int64, each item's K nearest gallery items (itself included),
      by d then index; every item left out is at least as far as the last kept;
    * ``"distances"``: [G, K] float32, their d;
    * ``"max_distance"``: [G] float32, each item's largest d over the gallery (the row
      maximum that normalises distances; a query farther away replaces it);
    * with ``expansions``: ``"expansion_offsets"`` [G + 1] int64, ``"expansion_indices"``
      [nnz] int64 (gallery indices, ascending within an item) and
      ``"expansion_distances"`` [nnz] float32: item i's expansion set E(i) over the gallery
      alone and the d to each member, in CSR form (item i's entries are
      ``offsets[i]:offsets[i + 1]``); nnz is about G times 1-3 k1.

    Memory: O(G K) plus a block of rows against the gallery (64 MB of scratch).
    """
    check_parameters(k1, 1, 0.0)
    _check_features(gallery_feats, "gallery_feats")
    n_gallery = gallery_feats.shape[0]
    if n_gallery == 0:
        raise ValueError("gallery_feats is empty")
    keep = min(k1 + 1 + MARGIN, n_gallery)
    graph = _Graph(None, gallery_feats)
    indices, distances, farthest = _nearest_in_gallery(graph, gallery_feats, keep)
    store = {"k1": int(k1), "gallery_size": n_gallery, "dim": gallery_feats.shape[1],
             "indices": indices, "distances": distances, "max_distance": farthest}
    if expansions:
        rows = torch.arange(n_gallery, device=indices.device)
        lists = _first_by_normalised(graph, rows, indices, distances, farthest,
                                     min(k1 + 1, n_gallery),
                                     _left_out_bound(distances, keep < n_gallery))
        offsets, members = _expansions(lists, rows, _half(k1), n_gallery)
        store["expansion_offsets"] = offsets
        store["expansion_indices"] = members
        store["expansion_distances"] = _member_distances(
            graph, torch.repeat_interleave(rows, offsets.diff()), members, indices, distances)
    return store


def rerank_queries(query_feats: torch.Tensor, gallery_feats: torch.Tensor,
                   neighbours: dict, k2: int = 6, lambda_value: float = 0.3, *,
                   k1: int | None = None) -> torch.Tensor:
    """Re-ranked distance [Q, G] (float32, on the features' device) of queries against a
    gallery whose ``neighbours = gallery_neighbours(gallery_feats, k1)`` was stored.

    Equal to ``k_reciprocal_rerank(query_feats, gallery_feats, k1, k2, lambda_value)``:
    the queries enter the neighbour graph exactly (a query nearer than a gallery item's
    k1-th neighbour enters its list; one farther than its farthest changes its row
    maximum), and only the items whose expansion can change are recomputed. Lower is more
    similar. ``k1``, when given, must equal the stored one.

    Cost per call: Q x (Q + G) inner products, plus sparse work over the items within two
    neighbour steps of a change; no G x G work. Memory: O((Q + G) k1 k2) plus the [Q, G]
    output (``rerank_queries_chunks`` yields it in blocks of rows instead).
    """
    return _collect(rerank_queries_chunks(query_feats, gallery_feats, neighbours, k2,
                                          lambda_value, k1=k1), query_feats, gallery_feats)


def rerank_queries_chunks(query_feats: torch.Tensor, gallery_feats: torch.Tensor,
                          neighbours: dict, k2: int = 6, lambda_value: float = 0.3, *,
                          k1: int | None = None,
                          chunk_size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """``rerank_queries`` in blocks: yields ``(first_query, distances)`` with distances
    [rows, G] float32 for queries ``first_query : first_query + rows``, in order. The
    sparse state (linear in Q + G) is built before the first block; ``chunk_size`` rows
    per block (default: about 64 MB of scratch per block)."""
    stored_k1 = int(neighbours["k1"])
    if k1 is not None and int(k1) != stored_k1:
        raise ValueError(f"k1={k1} differs from the k1={stored_k1} the gallery's "
                         "neighbours were computed with")
    check_parameters(stored_k1, k2, lambda_value)
    _check_features(query_feats, "query_feats")
    _check_features(gallery_feats, "gallery_feats")
    if tuple(gallery_feats.shape) != (neighbours["gallery_size"], neighbours["dim"]):
        raise ValueError(f"gallery_feats {tuple(gallery_feats.shape)} is not the gallery the "
                         f"neighbours were computed for ({neighbours['gallery_size']} x "
                         f"{neighbours['dim']})")
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"query_feats has {query_feats.shape[1]} dimensions, gallery_feats "
                         f"{gallery_feats.shape[1]}")
    if query_feats.device != gallery_feats.device:
        raise ValueError(f"query_feats on {query_feats.device}, gallery_feats on "
                         f"{gallery_feats.device}")
    return _rerank_chunks(query_feats, gallery_feats, neighbours, k2, lambda_value,
                          chunk_size)


def k_reciprocal_rerank(query_feats: torch.Tensor, gallery_feats: torch.Tensor, k1: int = 20,
                        k2: int = 6, lambda_value: float = 0.3) -> torch.Tensor:
    """k-reciprocal re-ranked distance [Q, G] (float32, lower = more similar) of L2-normalised
    query features [Q, D] against gallery features [G, D] (torch, CPU or CUDA).

    Equal (to 1e-5, and in the rankings it gives) to fast-reid's
    ``fastreid.evaluation.rerank.re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)`` given
    the Euclidean distances of the same features, but where float32 ties fall at the end
    of a neighbour list (module docstring), without its dense (Q+G)^2 matrices:
    extra memory O((Q + G) k1 k2) plus 64 MB blocks, besides the [Q, G] result. Arguments:
    k1 >= 1 neighbours, 1 <= k2 <= k1 (query expansion), 0 <= lambda_value <= 1 (the
    original distance's weight).
    """
    return _collect(k_reciprocal_rerank_chunks(query_feats, gallery_feats, k1, k2,
                                               lambda_value), query_feats, gallery_feats)


def k_reciprocal_rerank_chunks(query_feats: torch.Tensor, gallery_feats: torch.Tensor,
                               k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
                               chunk_size: int | None = None
                               ) -> Iterator[tuple[int, torch.Tensor]]:
    """``k_reciprocal_rerank`` in blocks of query rows: yields ``(first_query, distances
    [rows, G])`` in order, so that the [Q, G] result never needs to exist at once (20,000 x
    100,000 is 8 GB in float32)."""
    check_parameters(k1, k2, lambda_value)
    _check_features(gallery_feats, "gallery_feats")
    neighbours = gallery_neighbours(gallery_feats, k1, expansions=False)
    return rerank_queries_chunks(query_feats, gallery_feats, neighbours, k2, lambda_value,
                                 chunk_size=chunk_size)


def check_parameters(k1, k2, lambda_value) -> None:
    """ValueError naming the argument unless k1 >= 1, 1 <= k2 <= k1, 0 <= lambda <= 1."""
    def integer(value) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if not integer(k1) or k1 < 1:
        raise ValueError(f"k1={k1!r} must be an integer >= 1")
    if not integer(k2) or not 1 <= k2 <= k1:
        raise ValueError(f"k2={k2!r} must be an integer from 1 to k1 ({k1})")
    if not isinstance(lambda_value, numbers.Real) or isinstance(lambda_value, bool) \
            or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value={lambda_value!r} must be a number from 0 to 1")


def dense_bytes(n_query: int, n_gallery: int) -> int:
    """Bytes the dense algorithm (fast-reid's ``re_ranking``) holds at its peak for Q
    queries and G gallery items, counting only its (Q+G)^2 arrays: the normalised distance
    (float32), the zeroed weights V (float32) and the argsort's int64 ranks with their int32
    copy, alive together while the ranks are computed; the query-expanded V and the ranks
    then hold the same again (4 + 4 + 4 + 4 bytes). 20 bytes per pair."""
    n = n_query + n_gallery
    return 20 * n * n


# ----------------------------------------------------------------------------------------
# Distances.
# ----------------------------------------------------------------------------------------
def _check_features(feats, name: str) -> None:
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or not feats.is_floating_point():
        raise ValueError(f"{name} must be a 2-D floating-point tensor [N, D]")
    if feats.numel():
        norms = feats.float().norm(dim=1)
        worst = int((norms - 1).abs().argmax())
        if abs(float(norms[worst]) - 1) > 1e-3:
            raise ValueError(f"{name} must be L2-normalised: row {worst} has norm "
                             f"{float(norms[worst]):.4g}")


def _distances(rows64: torch.Tensor, others64: torch.Tensor) -> torch.Tensor:
    """Exact d [r, c] (float32) of float64 unit vectors rows [r, D] to others [c, D]: the
    float32 rounding of 2 - 2 s, s the inner product accumulated in float64."""
    two = torch.tensor(2.0, dtype=torch.float64, device=rows64.device)
    return torch.addmm(two, rows64, others64.T, alpha=-2.0).float().clamp_(min=0.0)


def _squared(inner: torch.Tensor) -> torch.Tensor:
    """float32 squared distances 2 - 2 s of unit vectors from float64 inner products s
    (overwritten)."""
    return inner.mul_(-2.0).add_(2.0).float().clamp_(min=0.0)


def _rows_per_block(width: int, bytes_per_entry: int) -> int:
    return max(1, _BLOCK_BYTES // max(1, width * bytes_per_entry))


@contextlib.contextmanager
def _full_precision():
    """Float32 matrix products at full float32 precision (no TF32, no reduced passes)."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with full_float32():
            yield
    finally:
        torch.set_float32_matmul_precision(saved)


class _Graph:
    """The items of one problem, queries numbered first, then the gallery; float64 copies
    of the features so that every distance is computed the same way."""

    def __init__(self, query_feats: torch.Tensor | None, gallery_feats: torch.Tensor):
        self.queries = None if query_feats is None else query_feats.double()
        self.gallery = gallery_feats.double()
        self.n_query = 0 if query_feats is None else query_feats.shape[0]
        self.size = self.n_query + gallery_feats.shape[0]
        self.device = gallery_feats.device

    def features(self, nodes: torch.Tensor) -> torch.Tensor:
        """float64 features [n, D] of items ``nodes`` [n]."""
        if self.n_query == 0:
            return self.gallery[nodes]
        out = self.gallery[(nodes - self.n_query).clamp(min=0)]
        is_query = nodes < self.n_query
        out[is_query] = self.queries[nodes[is_query]]
        return out

    def pair_distances(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Exact d [n] of the pairs (first[n], second[n])."""
        out = torch.empty(first.shape[0], dtype=torch.float32, device=self.device)
        step = _rows_per_block(self.gallery.shape[1], 32)
        for start in range(0, first.shape[0], step):
            inner = torch.einsum("nd,nd->n", self.features(first[start:start + step]),
                                 self.features(second[start:start + step]))
            out[start:start + step] = _squared(inner)
        return out

    def to_gallery(self, feats64: torch.Tensor) -> torch.Tensor:
        """Exact d [r, G] of float64 features [r, D] to the gallery."""
        return _distances(feats64, self.gallery)

    def to_queries(self, feats64: torch.Tensor) -> torch.Tensor:
        """Exact d [r, Q] of float64 features [r, D] to the queries."""
        return _distances(feats64, self.queries)

    def full_rows(self, nodes: torch.Tensor) -> torch.Tensor:
        """Exact d [n, Q + G] of items ``nodes`` to every item."""
        feats = self.features(nodes)
        parts = [] if self.n_query == 0 else [self.to_queries(feats)]
        return torch.cat([*parts, self.to_gallery(feats)], dim=1)


def _order_by_value_then_index(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Permutation [r, k] putting each row of ``values`` in ascending order, equal values
    by ``indices`` (distinct within a row, but for empty slots)."""
    by_index = indices.argsort(dim=1)
    order = torch.sort(values.gather(1, by_index), dim=1, stable=True).indices
    return by_index.gather(1, order)


def _left_out_bound(distances: torch.Tensor, truncated: bool) -> torch.Tensor:
    """[r]: a lower bound on the distance of every item left out of ascending lists
    ``distances`` [r, k] (the last kept one; +inf when nothing was left out)."""
    if truncated:
        return distances[:, -1].clone()
    return torch.full((distances.shape[0],), float("inf"), device=distances.device)


def _nearest_in_gallery(graph: _Graph, gallery: torch.Tensor, keep: int):
    """([G, keep] int64 nearest gallery items by (d, index), [G, keep] their d, [G] the
    largest d of each row): float32 products find candidates, float64 ones decide."""
    n_gallery, dim = gallery.shape
    device = gallery.device
    indices = torch.empty((n_gallery, keep), dtype=torch.int64, device=device)
    distances = torch.empty((n_gallery, keep), dtype=torch.float32, device=device)
    farthest = torch.empty(n_gallery, dtype=torch.float32, device=device)
    candidates = min(keep + _APPROX_EXTRA, n_gallery)
    gallery32 = gallery.float()
    norm = float(gallery32.norm(dim=1).max())
    # A float32 inner product of length D is within D * 2**-24 * |a| |b| of the exact one:
    # twice that, doubled again for d = 2 - 2 s, plus the rounding of the subtraction.
    tolerance = 4.0 * dim * 2.0 ** -24 * norm * norm + 2.0 ** -21
    step = min(_rows_per_block(n_gallery, 12), _rows_per_block(candidates * dim, 16))
    for start in range(0, n_gallery, step):
        rows = torch.arange(start, min(start + step, n_gallery), device=device)
        if candidates == n_gallery:  # a small gallery: every distance exactly
            redo = torch.ones(rows.shape[0], dtype=torch.bool, device=device)
        else:
            with _full_precision():
                approx = (gallery32[rows] @ gallery32.T).mul_(-2.0).add_(2.0)  # [r, G]
            near_approx, near = approx.topk(candidates, dim=1, largest=False)
            far_approx, far = approx.topk(_FARTHEST, dim=1, largest=True)
            del approx
            feats = graph.gallery[rows]
            near_exact = _squared(torch.einsum("rd,rkd->rk", feats, graph.gallery[near]))
            far_exact = _squared(torch.einsum("rd,rkd->rk", feats, graph.gallery[far]))
            order = _order_by_value_then_index(near_exact, near)[:, :keep]
            indices[rows] = near.gather(1, order)
            distances[rows] = near_exact.gather(1, order)
            farthest[rows] = far_exact.max(dim=1).values
            # Everything left out is exactly at least (last approximate - tolerance) away,
            # and nothing outside the farthest candidates beyond (their last + tolerance).
            redo = ((distances[rows, keep - 1] > near_approx[:, -1] - tolerance)
                    | (farthest[rows] < far_approx[:, -1] + tolerance))
            if float((near_exact - near_approx).abs().max()) > tolerance / 4:
                redo[:] = True  # the products were less precise than float32's
        if bool(redo.any()):
            rows = rows[redo]
            exact = graph.full_rows(rows)  # [r, G]
            values, order = torch.sort(exact, dim=1, stable=True)
            indices[rows], distances[rows] = order[:, :keep], values[:, :keep]
            farthest[rows] = exact.max(dim=1).values
    return indices, distances, farthest


def _first_by_normalised(graph: _Graph, rows: torch.Tensor, candidates: torch.Tensor,
                         distances: torch.Tensor, farthest: torch.Tensor, width: int,
                         bound: torch.Tensor) -> torch.Tensor:
    """Lists [r, width] of the items nearest to items ``rows`` [r] by (d / row maximum
    ``farthest``, item number). Taken among ``candidates`` [r, k] (their d in
    ``distances``, +inf in an empty slot) when every item left out is at least ``bound``
    [r] away and the last one kept clearly nearer; otherwise from all of the row's
    distances, exactly."""
    order = _order_by_value_then_index(distances / farthest[:, None], candidates)
    lists = candidates.gather(1, order[:, :width])
    last = distances.gather(1, order[:, width - 1:width]).squeeze(1)
    # Nearer by a margin that survives the division and float32 rounding.
    redo = (~(last < bound * (1 - _SLACK))).nonzero().squeeze(1)
    step = _rows_per_block(graph.size, 16)
    for start in range(0, redo.shape[0], step):
        where = redo[start:start + step]
        exact = graph.full_rows(rows[where])
        exact = exact / exact.max(dim=1, keepdim=True).values
        lists[where] = torch.sort(exact, dim=1, stable=True).indices[:, :width]
    return lists


def _half(k1: int) -> int:
    """round(k1 / 2), halves to even (numpy's ``around``, as the reference rounds)."""
    return round(k1 / 2)


# ----------------------------------------------------------------------------------------
# The sparse steps.
# ----------------------------------------------------------------------------------------
def _reciprocal(lists: torch.Tensor, nodes: torch.Tensor, width: int) -> torch.Tensor:
    """[n, width] bool: whether nodes[n] is among the first ``width`` of the list of each
    of its own first ``width`` neighbours."""
    head = lists[nodes, :width]  # [n, w]
    return (lists[head][:, :, :width] == nodes[:, None, None]).any(dim=2)


def _expansions(lists: torch.Tensor, rows: torch.Tensor, half: int, size: int):
    """Expansion sets E of items ``rows`` [r], from the lists [N, L] of all ``size``
    items: CSR offsets [r + 1] and members [nnz] (ascending within a row)."""
    width = lists.shape[1]
    half_width = min(half + 1, size)
    device = lists.device
    # R_half(c) of every item c in the rows' lists, once per item.
    needed = torch.zeros(size, dtype=torch.bool, device=device)
    needed[lists[rows]] = True
    items = needed.nonzero().squeeze(1)
    slot = torch.full((size,), -1, dtype=torch.int64, device=device)
    slot[items] = torch.arange(items.shape[0], device=device)
    half_reciprocal = torch.cat([
        _reciprocal(lists, items[start:start + 65536], half_width)
        for start in range(0, items.shape[0], 65536)])  # [n, h]
    del needed, items
    counts, members = [], []
    # Scratch per row: [L, h, L] comparisons (bool, twice) and [L, L] gathers (int64).
    step = _rows_per_block(2 * width * half_width * width + 24 * width * width, 1)
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step]
        near = lists[block]  # [r, L]
        mutual = _reciprocal(lists, block, width)  # R(i) = near[mutual]
        half_mutual = half_reciprocal[slot[near]]  # [r, L, h]
        half_near = lists[near][:, :, :half_width]  # [r, L, h]
        in_both = ((half_near[..., None] == near[:, None, None, :])
                   & mutual[:, None, None, :]).any(dim=3) & half_mutual
        shared = in_both.sum(dim=2).double()
        # The reference tests len(intersection) > 2. / 3 * len(R_half) in float64.
        taken = mutual & (shared > (2.0 / 3.0) * half_mutual.sum(dim=2).double())
        union = torch.cat([near.masked_fill(~mutual, size),
                           half_near.masked_fill(~(taken[..., None] & half_mutual),
                                                 size).flatten(1)], dim=1)
        union = union.sort(dim=1).values
        fresh = union < size
        fresh[:, 1:] &= union[:, 1:] != union[:, :-1]
        counts.append(fresh.sum(dim=1))
        members.append(union[fresh])
    offsets = torch.zeros(rows.shape[0] + 1, dtype=torch.int64, device=device)
    if not counts:
        return offsets, torch.zeros(0, dtype=torch.int64, device=device)
    offsets[1:] = torch.cat(counts).cumsum(0)
    return offsets, torch.cat(members)


def _member_distances(graph: _Graph, owners: torch.Tensor, members: torch.Tensor,
                      candidates: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Exact d [n] of the pairs (owners[n], members[n]): read from the owner's candidate
    list (``candidates`` [N, k] item numbers, ``distances`` [N, k]) where it is there,
    computed otherwise."""
    out = torch.empty(members.shape[0], dtype=torch.float32, device=graph.device)
    missing = []
    step = _rows_per_block(candidates.shape[1], 2)
    for start in range(0, members.shape[0], step):
        owner, member = owners[start:start + step], members[start:start + step]
        same = candidates[owner] == member[:, None]  # [n, k]
        found, at = same.max(dim=1)
        out[start:start + step] = distances[owner].gather(1, at[:, None]).squeeze(1)
        missing.append((~found).nonzero().squeeze(1) + start)
    missing = torch.cat(missing) if missing else members[:0]
    if missing.numel():
        out[missing] = graph.pair_distances(owners[missing], members[missing])
    return out


def _segment_positions(starts: torch.Tensor, lengths: torch.Tensor):
    """For segments (starts [n], lengths [n]) of a flat array: (owner [total], position
    [total]) of every element, owner being its segment's index."""
    owner = torch.repeat_interleave(torch.arange(starts.shape[0], device=starts.device),
                                    lengths)
    first = lengths.cumsum(0) - lengths
    position = (starts[owner] - first[owner]
                + torch.arange(owner.shape[0], device=starts.device))
    return owner, position


def _row_pieces(offsets: torch.Tensor, rows: torch.Tensor):
    """(owner, position) of the CSR entries of ``rows`` (owner: index into rows)."""
    return _segment_positions(offsets[rows], offsets[rows + 1] - offsets[rows])


def _csr_offsets(counts: torch.Tensor) -> torch.Tensor:
    offsets = torch.zeros(counts.shape[0] + 1, dtype=torch.int64, device=counts.device)
    offsets[1:] = counts.cumsum(0)
    return offsets


def _query_expanded(offsets, columns, weights, lists, rows, k2: int, size: int):
    """Rows ``rows`` [r] of V averaged over the first k2 items of their lists (V itself
    when k2 == 1): CSR offsets [r + 1], columns [nnz] (ascending per row), values
    [nnz] float32."""
    if k2 == 1:
        owner, position = _row_pieces(offsets, rows)
        return (_csr_offsets(torch.bincount(owner, minlength=rows.shape[0])),
                columns[position], weights[position])
    count = min(k2, size)
    longest = int((offsets[1:] - offsets[:-1]).max()) if size else 1
    step = max(1, _SPARSE_ENTRIES // (count * max(1, longest)))
    out_counts, out_columns, out_values = [], [], []
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step]
        owner, position = _row_pieces(offsets, lists[block, :count].reshape(-1))
        key = (owner // count) * size + columns[position]
        unique, inverse = torch.unique(key, return_inverse=True)
        sums = torch.zeros(unique.shape[0], dtype=torch.float32, device=columns.device)
        sums.index_add_(0, inverse, weights[position])
        out_counts.append(torch.bincount(unique // size, minlength=block.shape[0]))
        out_columns.append(unique % size)
        out_values.append(sums / count)
    if not out_counts:
        return _csr_offsets(rows.new_zeros(0)), columns[:0], weights[:0]
    return (_csr_offsets(torch.cat(out_counts)), torch.cat(out_columns),
            torch.cat(out_values))


# ----------------------------------------------------------------------------------------
# Re-ranking queries against a stored gallery.
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def _rerank_chunks(query_feats, gallery_feats, store, k2, lambda_value, chunk_size):
    k1 = int(store["k1"])
    n_query, n_gallery = query_feats.shape[0], gallery_feats.shape[0]
    device = gallery_feats.device
    if n_query == 0:
        return
    graph = _Graph(query_feats, gallery_feats)
    size = graph.size
    width = min(k1 + 1, size)
    lists, farthest = _all_lists(graph, store, width)

    # Items whose expansion may differ from the stored one: their list changed (every
    # query's is new), or a neighbour's did (so R may), or a neighbour's neighbour's (so
    # some R_half may).
    changed = torch.zeros(size, dtype=torch.bool, device=device)
    changed[:n_query] = True
    if "expansion_offsets" not in store or min(k1 + 1, n_gallery) != width:
        changed[:] = True
    else:
        changed[n_query:] = (lists[n_query:] != _stored_lists(graph, store, width)
                             + n_query).any(dim=1)
    for _ in range(2):
        changed = changed | changed[lists].any(dim=1)
    offsets, columns, distances = _expansion_state(graph, store, lists, changed, k1)

    # V: exp(-normalised distance) over each expansion set, each row summing to one.
    row_of = torch.repeat_interleave(torch.arange(size, device=device), offsets.diff())
    weights = torch.exp(-(distances / farthest[row_of]))
    totals = torch.zeros(size, dtype=torch.float32, device=device)
    totals.index_add_(0, row_of, weights)
    weights = weights / totals[row_of]
    del distances

    # Query-expanded rows: the queries', and those of the gallery rows that can share a
    # column with them (no other row can lower a query's Jaccard distance).
    queries = torch.arange(n_query, device=device)
    q_offsets, q_columns, q_values = _query_expanded(offsets, columns, weights, lists,
                                                     queries, k2, size)
    wanted = torch.zeros(size, dtype=torch.bool, device=device)
    wanted[q_columns] = True
    touching = torch.zeros(size, dtype=torch.bool, device=device)
    touching[row_of[wanted[columns]]] = True
    del row_of
    if k2 > 1:
        touching = touching[lists[:, :min(k2, size)]].any(dim=1)
    gallery_rows = touching[n_query:].nonzero().squeeze(1) + n_query
    g_offsets, g_columns, g_values = _query_expanded(offsets, columns, weights, lists,
                                                     gallery_rows, k2, size)
    del offsets, columns, weights, lists
    # Those rows column by column, over the wanted columns only.
    g_rows = torch.repeat_interleave(gallery_rows - n_query, g_offsets.diff())
    keep = wanted[g_columns]
    g_rows, g_columns, g_values = g_rows[keep], g_columns[keep], g_values[keep]
    by_column = torch.sort(g_columns, stable=True).indices
    col_rows, col_values = g_rows[by_column], g_values[by_column]
    col_offsets = _csr_offsets(torch.bincount(g_columns, minlength=size))
    del g_rows, g_columns, g_values, by_column, keep

    step = chunk_size or _rows_per_block(n_gallery, 32)
    for start in range(0, n_query, step):
        stop = min(start + step, n_query)
        overlap = torch.zeros((stop - start, n_gallery), dtype=torch.float32, device=device)
        owner, position = _row_pieces(q_offsets, queries[start:stop])
        _add_overlaps(overlap, owner, q_columns[position], q_values[position],
                      col_offsets, col_rows, col_values)
        jaccard = 1.0 - overlap / (2.0 - overlap)
        original = graph.to_gallery(graph.queries[start:stop]) / farthest[start:stop, None]
        yield start, jaccard * (1.0 - lambda_value) + original * lambda_value


def _add_overlaps(overlap, owner, columns, values, col_offsets, col_rows, col_values):
    """overlap[q, j] += min(V(q, k), V(j, k)) for each query entry (row ``owner``, column
    k, value) and every gallery row j holding column k, in ascending k per (q, j)."""
    n_gallery = overlap.shape[1]
    lengths = col_offsets[columns + 1] - col_offsets[columns]
    ends = lengths.cumsum(0)
    start = 0
    while start < owner.shape[0]:
        # As many entries as expand to at most _SPARSE_ENTRIES pairs (at least one).
        base = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(ends, base + _SPARSE_ENTRIES,
                                                     right=True)))
        pick, position = _segment_positions(col_offsets[columns[start:stop]],
                                            lengths[start:stop])
        pick += start
        overlap.view(-1).index_add_(0, owner[pick] * n_gallery + col_rows[position],
                                    torch.minimum(values[pick], col_values[position]))
        start = stop


def _stored_lists(graph: _Graph, store: dict, width: int) -> torch.Tensor:
    """The gallery's lists [G, width] over the gallery alone (gallery numbering), from
    which the stored expansions were computed."""
    n_gallery = store["indices"].shape[0]
    alone = _Graph(None, graph.gallery)
    return _first_by_normalised(
        alone, torch.arange(n_gallery, device=graph.device), store["indices"],
        store["distances"], store["max_distance"], width,
        _left_out_bound(store["distances"], store["indices"].shape[1] < n_gallery))


def _all_lists(graph: _Graph, store: dict, width: int):
    """Lists [Q + G, width] (item numbers) and row maxima [Q + G] of every item once the
    queries are in: the queries' from their exact distances to everything, the gallery's
    from the stored lists merged with the queries that come near enough."""
    n_query, size = graph.n_query, graph.size
    n_gallery = graph.gallery.shape[0]
    device = graph.device
    keep = min(int(store["k1"]) + 1 + MARGIN, size)
    keep_g, keep_q = min(keep, n_gallery), min(keep, n_query)
    stored_idx, stored_d = store["indices"], store["distances"]
    # A query farther than a gallery item's width-th stored neighbour cannot enter its
    # list (any query can when the stored lists are shorter than that).
    if stored_idx.shape[1] >= width:
        threshold = stored_d[:, width - 1] * (1 + 4 * _SLACK)
    else:
        threshold = torch.full((n_gallery,), float("inf"), device=device)
    near_q = torch.full((n_gallery, keep_q), float("inf"), device=device)
    near_q_idx = torch.full((n_gallery, keep_q), size, dtype=torch.int64, device=device)
    near_q_bound = threshold.clone()  # every query left out is at least this far
    far_q = torch.zeros(n_gallery, dtype=torch.float32, device=device)

    q_lists = torch.empty((n_query, width), dtype=torch.int64, device=device)
    q_far = torch.empty(n_query, dtype=torch.float32, device=device)
    step = _rows_per_block(size, 24)
    for start in range(0, n_query, step):
        rows = torch.arange(start, min(start + step, n_query), device=device)
        to_gallery = graph.to_gallery(graph.queries[rows])  # [r, G]
        to_queries = graph.to_queries(graph.queries[rows])  # [r, Q]
        g_val, g_idx = to_gallery.topk(keep_g, dim=1, largest=False)
        q_val, q_idx = to_queries.topk(keep_q, dim=1, largest=False)
        q_far[rows] = torch.maximum(to_gallery.max(dim=1).values,
                                    to_queries.max(dim=1).values)
        q_lists[rows] = _first_by_normalised(
            graph, rows, torch.cat([q_idx, g_idx + n_query], dim=1),
            torch.cat([q_val, g_val], dim=1), q_far[rows], width,
            torch.minimum(_left_out_bound(g_val, keep_g < n_gallery),
                          _left_out_bound(q_val, keep_q < n_query)))
        # The gallery's side: the farthest query, and the nearest ones under the threshold.
        far_q = torch.maximum(far_q, to_gallery.max(dim=0).values)
        under = to_gallery <= threshold
        hit = under.any(dim=0).nonzero().squeeze(1)
        if hit.numel():
            new = to_gallery[:, hit].T.masked_fill_(~under[:, hit].T, float("inf"))
            merged = torch.cat([near_q[hit], new], dim=1)
            merged_idx = torch.cat([near_q_idx[hit], rows.expand(hit.shape[0], -1)], dim=1)
            top, top_at = merged.topk(keep_q, dim=1, largest=False)
            dropped = torch.isfinite(merged).sum(dim=1) > keep_q
            near_q_bound[hit] = torch.where(
                dropped, torch.minimum(near_q_bound[hit], top[:, -1]), near_q_bound[hit])
            near_q[hit], near_q_idx[hit] = top, merged_idx.gather(1, top_at)
        del to_gallery, to_queries, under

    g_far = torch.maximum(store["max_distance"], far_q)
    g_lists = torch.empty((n_gallery, width), dtype=torch.int64, device=device)
    stored_bound = _left_out_bound(stored_d, stored_idx.shape[1] < n_gallery)
    step = _rows_per_block(keep_g + keep_q, 64)
    for start in range(0, n_gallery, step):
        rows = torch.arange(start, min(start + step, n_gallery), device=device)
        g_lists[rows] = _first_by_normalised(
            graph, rows + n_query,
            torch.cat([stored_idx[rows] + n_query, near_q_idx[rows]], dim=1),
            torch.cat([stored_d[rows], near_q[rows]], dim=1), g_far[rows], width,
            torch.minimum(stored_bound[rows], near_q_bound[rows]))
    return torch.cat([q_lists, g_lists]), torch.cat([q_far, g_far])


def _expansion_state(graph: _Graph, store: dict, lists, changed, k1: int):
    """CSR (offsets [N + 1], columns, d) of every item's expansion set: recomputed for the
    ``changed`` items, taken from the store (gallery numbering shifted) for the rest."""
    size, n_query = graph.size, graph.n_query
    rows = changed.nonzero().squeeze(1)
    new_offsets, new_columns = _expansions(lists, rows, _half(k1), size)
    new_distances = graph.pair_distances(
        torch.repeat_interleave(rows, new_offsets.diff()), new_columns)
    counts = torch.zeros(size, dtype=torch.int64, device=graph.device)
    counts[rows] = new_offsets.diff()
    kept = (~changed[n_query:]).nonzero().squeeze(1)  # gallery numbering
    if kept.numel():
        stored = store["expansion_offsets"]
        counts[kept + n_query] = stored[kept + 1] - stored[kept]
    offsets = _csr_offsets(counts)
    columns = torch.empty(int(offsets[-1]), dtype=torch.int64, device=graph.device)
    distances = torch.empty(int(offsets[-1]), dtype=torch.float32, device=graph.device)
    _, target = _row_pieces(offsets, rows)
    columns[target], distances[target] = new_columns, new_distances
    if kept.numel():
        _, source = _row_pieces(store["expansion_offsets"], kept)
        _, target = _row_pieces(offsets, kept + n_query)
        columns[target] = store["expansion_indices"][source] + n_query
        distances[target] = store["expansion_distances"][source]
    return offsets, columns, distances


def _collect(chunks, query_feats, gallery_feats) -> torch.Tensor:
    out = torch.empty((query_feats.shape[0], gallery_feats.shape[0]), dtype=torch.float32,
                      device=gallery_feats.device)
    for start, block in chunks:
        out[start:start + block.shape[0]] = block
    return out
