"""Tests for utils.metrics.rank_metrics (Market-1501 CMC / mAP / mINP)."""

import warnings

import numpy as np
import pytest
import torch

from tests.peers import load_peer_file
from utils.metrics import rank_metrics

KEYS = ("R1", "R5", "R10", "mAP", "mINP")
TOL = 1e-9


# --------------------------------------------------------------------------
# Slow, per-query reference written for clarity rather than speed.
# --------------------------------------------------------------------------
def reference_metrics(sim, q_ids, g_ids, q_cams=None, g_cams=None):
    sim = np.asarray(sim, dtype=np.float64)
    firsts, aps, inps = [], [], []
    for i in range(sim.shape[0]):
        # Descending similarity; a stable sort of the negated scores keeps
        # equal scores in gallery order.
        order = np.argsort(-sim[i], kind="stable")
        ranked_matches = []
        for j in order:
            same_id = g_ids[j] == q_ids[i]
            if q_cams is not None and same_id and g_cams[j] == q_cams[i]:
                continue  # same identity seen by the same camera: removed
            ranked_matches.append(bool(same_id))
        if not any(ranked_matches):
            continue  # query without a valid match: not counted
        found = 0
        precisions = []
        first = last = None
        for position, is_match in enumerate(ranked_matches, start=1):
            if is_match:
                found += 1
                precisions.append(found / position)
                if first is None:
                    first = position
                last = position
        firsts.append(first)
        aps.append(sum(precisions) / len(precisions))
        inps.append(found / last)
    if not firsts:
        raise ValueError("no valid query")
    n = len(firsts)
    out = {f"R{k}": 100.0 * sum(f <= k for f in firsts) / n for k in (1, 5, 10)}
    out["mAP"] = 100.0 * sum(aps) / n
    out["mINP"] = 100.0 * sum(inps) / n
    return out


def assert_close(got, want, tol=TOL):
    assert set(got) == set(KEYS)
    for k in KEYS:
        assert isinstance(got[k], float), (k, type(got[k]))
        assert abs(got[k] - want[k]) < tol, (k, got[k], want[k])


def random_problem(seed, n_q, n_g, n_ids, n_cams=None, tie_step=None):
    """Random scores and labels; ids repeat, some query ids miss the gallery."""
    rng = np.random.default_rng(seed)
    sim = rng.standard_normal((n_q, n_g))
    if tie_step is not None:
        sim = np.round(sim / tie_step) * tie_step  # many exact ties
    q_ids = rng.integers(0, n_ids + 3, n_q)  # ids >= n_ids never in gallery
    g_ids = rng.integers(0, n_ids, n_g)
    q_ids[0] = g_ids[0]  # at least one query has a match
    if n_cams is None:
        return sim, q_ids, g_ids, None, None
    return (sim, q_ids, g_ids, rng.integers(0, n_cams, n_q),
            rng.integers(0, n_cams, n_g))


# --------------------------------------------------------------------------
# Agreement with the reference on random data.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n_q,n_g,n_ids,n_cams,tie_step,chunk", [
    (1, 7, 2, None, None, None),
    (13, 40, 5, None, None, 4),
    (13, 40, 5, 2, None, 5),
    (37, 150, 12, 3, None, 10),
    (37, 150, 12, 3, 0.5, 7),       # heavy ties: exercises the sorting path
    (50, 200, 4, 2, 0.05, 16),      # many matches per query, some ties
    (29, 300, 40, 6, None, None),
    (64, 120, 30, 1, None, 9),      # one camera: all same-id entries removed
])
def test_matches_reference(n_q, n_g, n_ids, n_cams, tie_step, chunk):
    sim, q, g, qc, gc = random_problem(n_q * 1000 + n_g, n_q, n_g, n_ids,
                                       n_cams, tie_step)
    if n_cams == 1:
        # Give a few gallery entries a second camera so some queries stay valid.
        gc = gc.copy()
        gc[::5] = 1
    want = reference_metrics(sim, q, g, qc, gc)
    got = rank_metrics(torch.from_numpy(sim), torch.from_numpy(q),
                       torch.from_numpy(g),
                       None if qc is None else torch.from_numpy(qc),
                       None if gc is None else torch.from_numpy(gc),
                       chunk_size=chunk)
    assert_close(got, want)


def test_float32_and_infinite_scores_match_reference():
    sim, q, g, qc, gc = random_problem(3, 31, 90, 8, 3)
    sim = sim.astype(np.float32)
    sim[2, :] = 0.25                # a row of identical scores
    sim[5, ::3] = -np.inf           # masked entries
    sim[7, 4] = np.inf
    sim[8, g == q[8]] = -np.inf     # all matches masked
    want = reference_metrics(sim, q, g, qc, gc)
    assert_close(rank_metrics(torch.from_numpy(sim), q, g, qc, gc,
                              chunk_size=6), want)


def test_accepts_numpy_half_and_strided_inputs():
    sim, q, g, qc, gc = random_problem(5, 20, 80, 6, 2, tie_step=1 / 64)
    want = reference_metrics(sim, q, g, qc, gc)
    assert_close(rank_metrics(sim, q, g, qc, gc), want)
    # Multiples of 1/64 in this range are exact in float16.
    assert_close(rank_metrics(torch.from_numpy(sim).half(), torch.from_numpy(q),
                              torch.from_numpy(g), torch.from_numpy(qc),
                              torch.from_numpy(gc)), want)
    # Non-contiguous (transposed storage) scores.
    transposed = torch.from_numpy(np.ascontiguousarray(sim.T)).T
    assert not transposed.is_contiguous()
    assert_close(rank_metrics(transposed, q, g, qc, gc, chunk_size=3), want)


# --------------------------------------------------------------------------
# Agreement with fast-reid's Python Market-1501 evaluation.
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fastreid_eval():
    """fastreid/evaluation/rank.py of the installed fastreid (skipped, or failed under CI,
    when it is missing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "cython unavailable" notice
        module = load_peer_file("fastreid", "evaluation/rank.py")
    # eval_market1501 is the pure-Python implementation (never the cython one).
    return module.eval_market1501


def fastreid_metrics(eval_fn, sim, q, g, qc, gc):
    all_cmc, all_ap, all_inp = eval_fn(-sim, q, g, qc, gc, 50)
    n_valid = len(all_ap)
    out = {}
    for k in (1, 5, 10):
        # The CMC curve comes back as float32 fractions; recover the exact
        # query counts so the comparison is not limited by float32 rounding.
        hits = int(round(float(all_cmc[k - 1]) * n_valid))
        assert abs(hits / n_valid - float(all_cmc[k - 1])) < 1e-6
        out[f"R{k}"] = 100.0 * hits / n_valid
    out["mAP"] = 100.0 * float(np.mean(all_ap))
    out["mINP"] = 100.0 * float(np.mean(all_inp))
    return out


@pytest.mark.parametrize("seed,n_q,n_g,n_ids,n_cams", [
    (0, 40, 300, 25, 2),
    (1, 100, 500, 60, 6),
    (2, 77, 250, 10, 3),
])
def test_matches_fastreid_random(fastreid_eval, seed, n_q, n_g, n_ids, n_cams):
    # float64 normal scores: ties (which numpy's unstable argsort may order
    # differently) do not occur.
    sim, q, g, qc, gc = random_problem(seed, n_q, n_g, n_ids, n_cams)
    want = fastreid_metrics(fastreid_eval, sim, q, g, qc, gc)
    assert_close(rank_metrics(torch.from_numpy(sim), q, g, qc, gc), want)


def test_matches_fastreid_market_like(fastreid_eval):
    """Identity-structured features, 6 cameras, extra distractor identities."""
    rng = np.random.default_rng(1501)
    n_ids, n_cams, dim = 120, 6, 64
    centers = rng.standard_normal((n_ids + 200, dim))
    q_ids, q_cams, g_ids, g_cams = [], [], [], []
    for pid in range(n_ids):
        cams = rng.choice(n_cams, size=rng.integers(2, n_cams + 1), replace=False)
        q_ids.append(pid)
        q_cams.append(cams[0])  # one query per identity
        for cam in cams:
            for _ in range(rng.integers(1, 5)):
                g_ids.append(pid)
                g_cams.append(cam)
    for pid in range(n_ids, n_ids + 200):  # distractor identities
        for _ in range(3):
            g_ids.append(pid)
            g_cams.append(rng.integers(n_cams))
    q_ids, q_cams = np.array(q_ids), np.array(q_cams)
    g_ids, g_cams = np.array(g_ids), np.array(g_cams)
    q_feat = centers[q_ids] + 0.9 * rng.standard_normal((len(q_ids), dim))
    g_feat = centers[g_ids] + 0.9 * rng.standard_normal((len(g_ids), dim))
    q_feat /= np.linalg.norm(q_feat, axis=1, keepdims=True)
    g_feat /= np.linalg.norm(g_feat, axis=1, keepdims=True)
    sim = q_feat @ g_feat.T

    want = fastreid_metrics(fastreid_eval, sim, q_ids, g_ids, q_cams, g_cams)
    got = rank_metrics(torch.from_numpy(sim), q_ids, g_ids, q_cams, g_cams)
    assert_close(got, want)
    assert 0.0 < got["mAP"] < 100.0 and got["R1"] > 20.0  # non-trivial case


# --------------------------------------------------------------------------
# Tiny cases with answers worked out by hand.
# --------------------------------------------------------------------------
def test_perfect_ranking_is_100():
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.2, 0.0],
                        [0.1, 0.3, 0.9, 0.7, 0.8]])
    q = torch.tensor([0, 1])
    g = torch.tensor([0, 0, 1, 1, 1])
    assert_close(rank_metrics(sim, q, g), dict.fromkeys(KEYS, 100.0))


def test_single_match_at_rank_three():
    # Ranking by score: g3, g1, g0 (the match), g2, g4, g5.
    sim = torch.tensor([[0.5, 0.6, 0.3, 0.9, 0.2, 0.1]])
    q = torch.tensor([7])
    g = torch.tensor([7, 1, 2, 3, 4, 5])
    want = {"R1": 0.0, "R5": 100.0, "R10": 100.0,
            "mAP": 100.0 / 3, "mINP": 100.0 / 3}
    assert_close(rank_metrics(sim, q, g), want)


def test_two_matches_ap_and_inp_by_hand():
    # Matches at positions 1 and 4: AP = (1/1 + 2/4) / 2 = 0.75,
    # INP = 2 matches / last position 4 = 0.5.
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    q = torch.tensor([1])
    g = torch.tensor([1, 0, 0, 1, 0])
    want = {"R1": 100.0, "R5": 100.0, "R10": 100.0, "mAP": 75.0, "mINP": 50.0}
    assert_close(rank_metrics(sim, q, g), want)


def test_same_camera_matches_are_removed():
    # Without cams the match on camera 0 is first.  With cams it is removed,
    # which also moves the remaining match from position 3 to position 2.
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    q, qc = torch.tensor([4]), torch.tensor([0])
    g, gc = torch.tensor([4, 2, 4, 3]), torch.tensor([0, 1, 1, 0])
    assert_close(rank_metrics(sim, q, g),
                 {"R1": 100.0, "R5": 100.0, "R10": 100.0,
                  "mAP": 100.0 * (1 + 2 / 3) / 2, "mINP": 100.0 * 2 / 3})
    assert_close(rank_metrics(sim, q, g, qc, gc),
                 {"R1": 0.0, "R5": 100.0, "R10": 100.0,
                  "mAP": 50.0, "mINP": 50.0})


def test_queries_without_valid_match_are_skipped():
    # Query 0: match at position 1.  Query 1: id absent.  Query 2: its only
    # match shares its camera.  Only query 0 counts.
    sim = torch.tensor([[0.9, 0.1, 0.2],
                        [0.5, 0.6, 0.7],
                        [0.1, 0.2, 0.3]])
    q, qc = torch.tensor([0, 9, 2]), torch.tensor([1, 1, 3])
    g, gc = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 3])
    assert_close(rank_metrics(sim, q, g, qc, gc), dict.fromkeys(KEYS, 100.0))


def test_ties_are_broken_by_gallery_index():
    sim = torch.zeros(2, 4)  # every score equal: ranking is 0, 1, 2, 3
    q = torch.tensor([5, 6])
    g = torch.tensor([1, 5, 6, 6])
    # q0: match at 2 -> AP 1/2.  q1: matches at 3, 4 -> AP (1/3 + 2/4) / 2.
    want = {"R1": 0.0, "R5": 100.0, "R10": 100.0,
            "mAP": 100.0 * (0.5 + (1 / 3 + 0.5) / 2) / 2,
            "mINP": 100.0 * (0.5 + 0.5) / 2}
    assert_close(rank_metrics(sim, q, g), want)


def test_matches_tied_only_with_each_other():
    # The two matches share a score no other entry has: positions 2 and 3.
    sim = torch.tensor([[0.5, 0.9, 0.5, 0.1]])
    q = torch.tensor([0])
    g = torch.tensor([0, 1, 0, 2])
    want = {"R1": 0.0, "R5": 100.0, "R10": 100.0,
            "mAP": 100.0 * (1 / 2 + 2 / 3) / 2, "mINP": 100.0 * 2 / 3}
    assert_close(rank_metrics(sim, q, g), want)


# --------------------------------------------------------------------------
# Invariance, chunking and errors.
# --------------------------------------------------------------------------
def test_gallery_permutation_invariance():
    sim, q, g, qc, gc = random_problem(11, 45, 230, 15, 4)
    base = rank_metrics(torch.from_numpy(sim), q, g, qc, gc)
    perm = np.random.default_rng(12).permutation(sim.shape[1])
    permuted = rank_metrics(torch.from_numpy(sim[:, perm]), q,
                            g[perm], qc, gc[perm])
    assert_close(permuted, base)


def test_chunk_size_does_not_change_results():
    sim, q, g, qc, gc = random_problem(21, 53, 170, 9, 3, tie_step=0.25)
    sim_t = torch.from_numpy(sim)
    default = rank_metrics(sim_t, q, g, qc, gc)
    assert rank_metrics(sim_t, q, g, qc, gc, chunk_size=1) == default
    assert rank_metrics(sim_t, q, g, qc, gc, chunk_size=len(q)) == default
    assert rank_metrics(sim_t, q, g, qc, gc, chunk_size=10 * len(q)) == default


def test_no_valid_query_raises():
    sim = torch.rand(3, 4)
    with pytest.raises(ValueError, match="no valid query"):
        rank_metrics(sim, torch.tensor([7, 8, 9]), torch.tensor([0, 1, 2, 3]))
    # Every same-id gallery entry shares the query's camera.
    with pytest.raises(ValueError, match="no valid query"):
        rank_metrics(sim, torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2, 3]),
                     torch.tensor([0, 0, 0]), torch.tensor([0, 0, 1, 1]))


def test_bad_inputs_raise():
    sim = torch.rand(2, 3)
    q, g = torch.tensor([0, 1]), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        rank_metrics(torch.tensor([[0.1, float("nan"), 0.2], [0.1, 0.2, 0.3]]), q, g)
    with pytest.raises(ValueError, match="both"):
        rank_metrics(sim, q, g, query_cams=torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        rank_metrics(sim, torch.tensor([0, 1, 2]), g)
    with pytest.raises(ValueError):
        rank_metrics(sim[0], q, g)
