"""Retrieval metrics for re-identification (CMC ranks, mAP, mINP)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rank_metrics"]

# Bytes of scratch memory per [chunk, G] element at peak: reused buffers
# (bool match mask, int32 buckets, gathered scores, bool hits, a converted
# score copy for other dtypes) plus the sort of the tie fallback (values,
# int64 indices, gathered mask).  Used to pick the default chunk size.
_BYTES_PER_ELEMENT = 40
_CHUNK_BUDGET_BYTES = 256 * 1024 * 1024
# On CPU a ~1M-element block (tens of MB of scratch) was fastest.
_CPU_CHUNK_ELEMENTS = 1 << 20


def _as_tensor(x, device: torch.device, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


def _pad_by_row(rows: torch.Tensor, counts: torch.Tensor, values: torch.Tensor,
                width: int, fill) -> torch.Tensor:
    """Scatter a row-major flat list (grouped by ``rows``) into [R, width]."""
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    out = torch.full((counts.numel(), width), fill, dtype=values.dtype,
                     device=values.device)
    out[rows, slot] = values
    return out


def _ranks_by_sorting(sim: torch.Tensor, match: torch.Tensor,
                      counts: torch.Tensor, q_cams, g_cams, width: int):
    """Exact 1-based ranks of every same-id gallery entry, via a full sort.

    Returns ([R, width] int64 ranks ascending per row, [R, width] bool junk
    flags); slots past a row's match count are padding.
    """
    # A stable descending sort puts equal similarities in gallery order.
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices
    rows, pos = match.gather(1, order).nonzero(as_tuple=True)
    ranks = _pad_by_row(rows, counts, pos + 1, width, 0)
    if q_cams is None:
        junk = torch.zeros_like(ranks, dtype=torch.bool)
    else:
        flat_junk = q_cams[rows] == g_cams[order[rows, pos]]
        junk = _pad_by_row(rows, counts, flat_junk, width, True)
    return ranks, junk


def _ranks_by_counting(sim: torch.Tensor, match: torch.Tensor,
                       counts: torch.Tensor, q_cams, g_cams, width: int,
                       work: dict[str, torch.Tensor]):
    """Same output as ``_ranks_by_sorting`` without sorting whole rows.

    A match's rank is one plus the number of gallery entries scoring strictly
    higher.  The match scores of a row are few, so they are sorted on their own
    and every gallery score is bucketed among them with a binary search; a
    histogram of the buckets then gives the count above each match score.  This
    is only exact when the row has no tied scores involving a match (ties are
    broken by gallery index, which counting cannot see), so such rows are
    reported in the returned mask and must be redone by sorting.

    ``work`` holds reusable [chunk, G] buffers ("bucket" int32, "score" of
    sim's dtype, "hit" bool) so that chunks do not allocate fresh memory.
    """
    c, g = sim.shape
    rows, cols = match.nonzero(as_tuple=True)
    vals = sim[rows, cols]
    # -inf padding sorts in front of the real thresholds, so after the flip
    # below the padding lands at the end of each row.  A +inf sentinel column
    # keeps every bucket index a valid position in ``thr``.
    thr = _pad_by_row(rows, counts, vals, width + 1, float("-inf"))
    thr[:, -1] = float("inf")
    thr, perm = torch.sort(thr, dim=1)
    # Clamp only matters for rows with a +inf match score, which tie with the
    # sentinel and are redone by sorting anyway.
    perm = perm[:, :-1].clamp(max=width - 1)
    # bucket = #thresholds < score, in [0, width]; int32 halves the traffic
    # of the largest temporary.  Shifted per row to index the flat histogram.
    flat = torch.searchsorted(thr, sim, side="left", out_int32=True,
                              out=work["bucket"][:c])
    flat += (torch.arange(c, device=sim.device, dtype=torch.int32)
             * (width + 1))[:, None]
    flat = flat.view(-1)

    # Tie check: a score equal to some threshold equals the one it is
    # bucketed at.  Each real match hits itself exactly once, so any surplus
    # means a tie with another gallery entry (or with the -inf padding or the
    # +inf sentinel).
    bucket_score = torch.index_select(thr.view(-1), 0, flat,
                                      out=work["score"][:c].view(-1))
    hit = torch.eq(bucket_score.view(c, g), sim, out=work["hit"][:c])
    tied = hit.sum(1) != counts
    # Equal scores among a row's matches hit each other once only, so look
    # for neighbouring duplicates among the real thresholds as well.
    real = (torch.arange(width, device=sim.device)
            >= (width - counts)[:, None])
    if width > 1:
        dup = (thr[:, 1:width] == thr[:, :width - 1]) & real[:, :-1]
        tied |= dup.any(1)
    # Non-finite match scores make the padding ambiguous; sort those rows.
    tied |= _pad_by_row(rows, counts, ~torch.isfinite(vals), width, False).any(1)

    hist = torch.bincount(flat, minlength=c * (width + 1)).view(c, width + 1)
    # #scores > thr[m] = #scores with bucket > m (suffix sum, exclusive).
    greater = hist.flip(1).cumsum(1).flip(1)[:, 1:]
    ranks = (greater + 1).flip(1)
    perm = perm.flip(1)

    if q_cams is None:
        junk = torch.zeros_like(ranks, dtype=torch.bool)
    else:
        flat_junk = q_cams[rows] == g_cams[cols]
        junk = _pad_by_row(rows, counts, flat_junk, width, True).gather(1, perm)
    return ranks, junk, tied


def _per_query(ranks: torch.Tensor, junk: torch.Tensor, counts: torch.Tensor):
    """Per-query first/last kept rank of a true match, AP and match count."""
    width = ranks.shape[1]
    real = torch.arange(width, device=ranks.device) < counts[:, None]
    junk = junk & real
    good = real & ~junk
    # Removed entries ahead of a match shift it up the kept ranking.
    kept_rank = ranks - (torch.cumsum(junk, 1) - junk.long())
    hits = torch.cumsum(good, 1)
    n_good = hits[:, -1]
    kept64 = kept_rank.to(torch.float64)
    precision = torch.where(good, hits.to(torch.float64) / kept64,
                            torch.zeros((), dtype=torch.float64, device=ranks.device))
    ap = precision.sum(1) / n_good.clamp(min=1).to(torch.float64)
    big = torch.iinfo(torch.int64).max
    first = torch.where(good, kept_rank, torch.full_like(kept_rank, big)).amin(1)
    last = torch.where(good, kept_rank, torch.zeros_like(kept_rank)).amax(1)
    return first, last, ap, n_good


RANK_DENOMINATORS = ("valid", "all")


def rank_metrics(similarity, query_ids, gallery_ids, query_cams=None,
                 gallery_cams=None, chunk_size: int | None = None,
                 rank_denominator: str = "valid") -> dict[str, float]:
    """CMC rank-1/5/10, mAP and mINP under the Market-1501 protocol.

    Args:
        similarity: [Q, G] scores, higher = more similar (torch or numpy).
            Computation happens on its device.
        query_ids: [Q] integer identities; gallery_ids: [G].
        query_cams, gallery_cams: optional [Q] / [G] camera ids. When both are
            given, gallery entries sharing the query's identity *and* camera
            are dropped from that query's ranking.
        chunk_size: queries processed at a time. The default keeps one
            chunk's scratch memory within ~256 MB (much less on CPU, where
            small blocks are faster); extra memory is O(chunk_size * G + Q).
        rank_denominator: "valid" (the Market-1501 protocol) divides rank-k
            by the queries that have a correct match left; "all" divides by
            every query, so one left without a match counts as a miss (as the
            paper's code does). mAP and mINP always average valid queries.

    Protocol: galleries are ranked by descending similarity, ties broken by
    gallery index (as a stable sort would). Queries with no same-identity
    entry left are skipped. Rank-k is the share of queries whose first correct
    match is within the top k; AP averages the precision at each correct
    match; INP is (#correct matches) / (1-based position of the last one).

    Returns:
        {"R1", "R5", "R10", "mAP", "mINP"} as floats in percent.

    Raises:
        ValueError: on bad shapes, NaN scores, or when no query is valid.
    """
    if rank_denominator not in RANK_DENOMINATORS:
        raise ValueError(f"rank_denominator must be one of {RANK_DENOMINATORS}, got "
                         f"{rank_denominator!r}")
    sim = similarity if isinstance(similarity, torch.Tensor) else torch.as_tensor(
        np.asarray(similarity))
    if sim.dim() != 2:
        raise ValueError(f"similarity must be 2-D [Q, G], got shape {tuple(sim.shape)}")
    # Other dtypes are converted chunk by chunk (half precision to float32 is
    # exact, so order and ties are kept) to avoid a full-size copy.
    work_dtype = (sim.dtype if sim.dtype in (torch.float32, torch.float64)
                  else torch.float32 if sim.is_floating_point() else torch.float64)
    n_q, n_g = sim.shape
    device = sim.device

    q_ids = _as_tensor(query_ids, device, "query_ids")
    g_ids = _as_tensor(gallery_ids, device, "gallery_ids")
    if q_ids.numel() != n_q or g_ids.numel() != n_g:
        raise ValueError(
            f"ids do not fit similarity {tuple(sim.shape)}: "
            f"{q_ids.numel()} query ids, {g_ids.numel()} gallery ids")
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError("give both query_cams and gallery_cams, or neither")
    q_cams = g_cams = None
    if query_cams is not None:
        q_cams = _as_tensor(query_cams, device, "query_cams")
        g_cams = _as_tensor(gallery_cams, device, "gallery_cams")
        if q_cams.numel() != n_q or g_cams.numel() != n_g:
            raise ValueError(
                f"cams do not fit similarity {tuple(sim.shape)}: "
                f"{q_cams.numel()} query cams, {g_cams.numel()} gallery cams")

    if chunk_size is None:
        if device.type == "cpu":
            # Smaller blocks stay cache-resident and measured fastest on CPU.
            chunk_size = _CPU_CHUNK_ELEMENTS // max(n_g, 1)
        else:
            chunk_size = _CHUNK_BUDGET_BYTES // (_BYTES_PER_ELEMENT * max(n_g, 1))
    # Bucket indices are int32 and offset by row within a chunk, so a chunk
    # must stay below 2**31 elements (results do not depend on chunking).
    chunk_size = min(int(chunk_size), (2**31 - 1) // (n_g + 1))
    chunk_size = max(1, min(chunk_size, max(n_q, 1)))

    # Per-query results, reduced once at the end: the totals then do not
    # depend on the chunking, and float64 keeps AP/INP sums precise.
    first_all = torch.zeros(n_q, dtype=torch.int64, device=device)
    ap_all = torch.zeros(n_q, dtype=torch.float64, device=device)
    inp_all = torch.zeros(n_q, dtype=torch.float64, device=device)
    valid_all = torch.zeros(n_q, dtype=torch.bool, device=device)
    # Scratch reused by every chunk: fresh multi-MB allocations per chunk
    # cost page faults that can outweigh the arithmetic on CPU.
    work = {
        "match": torch.empty((chunk_size, n_g), dtype=torch.bool, device=device),
        "bucket": torch.empty((chunk_size, n_g), dtype=torch.int32, device=device),
        "score": torch.empty((chunk_size, n_g), dtype=work_dtype, device=device),
        "hit": torch.empty((chunk_size, n_g), dtype=torch.bool, device=device),
    }

    for start in range(0, n_q if n_g else 0, chunk_size):
        stop = min(start + chunk_size, n_q)
        s = sim[start:stop]
        # A plain sum is far cheaper than isnan() and is NaN whenever any
        # entry is; only then pay for the exact check (inf - inf and overflow
        # also land here).
        if not bool(torch.isfinite(s.sum())) and bool(torch.isnan(s).any()):
            raise ValueError("similarity contains NaN")
        qc = None if q_cams is None else q_cams[start:stop]
        match = torch.eq(q_ids[start:stop, None], g_ids[None, :],
                         out=work["match"][:stop - start])
        counts = match.sum(1)
        width = int(counts.max())
        if width == 0:
            continue
        if s.dtype != work_dtype or not s.is_contiguous():
            if "sim" not in work:
                work["sim"] = torch.empty((chunk_size, n_g), dtype=work_dtype,
                                          device=device)
            s = work["sim"][:stop - start].copy_(s)
        ranks, junk, tied = _ranks_by_counting(s, match, counts, qc, g_cams,
                                               width, work)
        tied_rows = tied.nonzero(as_tuple=True)[0]
        if tied_rows.numel():
            ranks[tied_rows], junk[tied_rows] = _ranks_by_sorting(
                s[tied_rows], match[tied_rows], counts[tied_rows],
                None if qc is None else qc[tied_rows], g_cams, width)

        first, last, ap, n_good = _per_query(ranks, junk, counts)
        ok = n_good > 0
        valid_all[start:stop] = ok
        first_all[start:stop] = torch.where(ok, first, torch.zeros_like(first))
        ap_all[start:stop] = torch.where(ok, ap, torch.zeros_like(ap))
        inp_all[start:stop] = torch.where(
            ok, n_good.to(torch.float64) / last.clamp(min=1).to(torch.float64),
            torch.zeros_like(ap))

    n_valid = int(valid_all.sum())
    if n_valid == 0:
        raise ValueError(
            "no valid query: no query has a same-identity gallery entry left "
            "after removing same-identity same-camera entries")
    out = {}
    n_ranked = n_valid if rank_denominator == "valid" else n_q
    for k in (1, 5, 10):
        hits = int((valid_all & (first_all <= k)).sum())
        out[f"R{k}"] = 100.0 * hits / n_ranked
    out["mAP"] = 100.0 * float(ap_all.sum()) / n_valid
    out["mINP"] = 100.0 * float(inp_all.sum()) / n_valid
    return out
