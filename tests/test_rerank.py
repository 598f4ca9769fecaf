"""k-reciprocal re-ranking (``utils.rerank``) against fast-reid's dense ``re_ranking``, its
memory against the dense algorithm's, and ``test.rerank`` in test.py's evaluation."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine.stages
import test as test_entry
from engine import compare
from engine.evaluation import rerank_setting, similarity_scores
from tests.peers import load_peer_file
from utils.config import load_config
from utils.errors import ConfigError
from utils.metrics import rank_metrics
from utils.rerank import (
    check_parameters,
    dense_bytes,
    gallery_neighbours,
    k_reciprocal_rerank,
    k_reciprocal_rerank_chunks,
    rerank_queries,
    rerank_queries_chunks,
)


def features(count: int, dim: int, generator: torch.Generator, people: int = 0,
             spread: float = 0.3) -> tuple:
    """(L2-normalised features [count, dim], person ids [count]): uniform on the sphere,
    or with ``people`` around one centre per person."""
    if not people:
        ids = torch.arange(count)
        return F.normalize(torch.randn(count, dim, generator=generator), dim=1), ids
    centres = F.normalize(torch.randn(people, dim, generator=generator), dim=1)
    ids = torch.randint(0, people, (count,), generator=generator)
    noise = spread * torch.randn(count, dim, generator=generator) / dim ** 0.5
    return F.normalize(centres[ids] + noise, dim=1), ids


def problem(n_query: int, n_gallery: int, dim: int = 32, people: int = 0, seed: int = 0):
    """Queries, gallery, their ids and cams; clustered features share the people."""
    generator = torch.Generator().manual_seed(seed)
    if people:
        feats, ids = features(n_query + n_gallery, dim, generator, people)
    else:
        feats, _ = features(n_query + n_gallery, dim, generator)
        ids = torch.randint(0, max(2, (n_query + n_gallery) // 4), (n_query + n_gallery,),
                            generator=generator)
    cams = torch.randint(0, 3, (n_query + n_gallery,), generator=generator)
    return (feats[:n_query], feats[n_query:], ids[:n_query], ids[n_query:], cams[:n_query],
            cams[n_query:])


def fast_reid_distances(query_feats, gallery_feats, k1, k2, lambda_value) -> torch.Tensor:
    """fast-reid's dense ``re_ranking`` given the Euclidean distances (it squares them) of
    the same features, computed in float64."""
    re_ranking = load_peer_file("fastreid", "evaluation/rerank.py").re_ranking
    q, g = query_feats.double(), gallery_feats.double()

    def euclidean(a, b):
        return torch.sqrt(torch.clamp(2.0 - 2.0 * a @ b.T, min=0.0)).numpy()

    out = re_ranking(euclidean(q, g), euclidean(q, q), euclidean(g, g), k1, k2, lambda_value)
    return torch.from_numpy(np.ascontiguousarray(out))


# --------------------------------------------------------------------- parity with fast-reid
CASES = {
    # name: (queries, gallery, k1, k2, lambda, people (0: uniform), dtype)
    "clustered": (40, 160, 20, 6, 0.3, 12, torch.float32),
    "uniform": (40, 160, 20, 6, 0.3, 0, torch.float32),
    "fewer queries than k1": (5, 120, 20, 6, 0.3, 10, torch.float32),
    "one query": (1, 90, 20, 6, 0.3, 8, torch.float32),
    "gallery under k1 + 1": (12, 15, 20, 6, 0.3, 4, torch.float32),
    "everything under k1 + 1": (3, 9, 20, 6, 0.3, 3, torch.float32),
    "k2 = 1": (30, 100, 20, 1, 0.3, 10, torch.float32),
    "lambda 0": (30, 100, 20, 6, 0.0, 10, torch.float32),
    "lambda 1": (30, 100, 20, 6, 1.0, 10, torch.float32),
    "k1 odd (7, half 4)": (30, 100, 7, 3, 0.3, 10, torch.float32),
    "k1 = 5 (half rounds to even: 2)": (30, 100, 5, 5, 0.5, 10, torch.float32),
    "k1 = 1": (20, 60, 1, 1, 0.3, 10, torch.float32),
    "float16 features": (30, 100, 20, 6, 0.3, 10, torch.float16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_equals_fast_reid_re_ranking(name):
    n_query, n_gallery, k1, k2, lambda_value, people, dtype = CASES[name]
    query, gallery, query_ids, gallery_ids, query_cams, gallery_cams = problem(
        n_query, n_gallery, people=people, seed=len(name))
    query, gallery = query.to(dtype), gallery.to(dtype)
    ours = k_reciprocal_rerank(query, gallery, k1, k2, lambda_value)
    reference = fast_reid_distances(query, gallery, k1, k2, lambda_value)
    assert ours.dtype == torch.float32 and ours.shape == (n_query, n_gallery)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    assert not torch.equal(ours.argsort(dim=1), (2 - 2 * query.float() @ gallery.float().T)
                           .argsort(dim=1)) or lambda_value == 1.0 or k1 == 1, \
        "re-ranking left every ranking as it was: the problem tests nothing"
    # The same rankings, so the same metrics, to the last bit.
    for cams in ((None, None), (query_cams, gallery_cams)):
        for denominator in ("valid", "all"):
            ours_metrics = rank_metrics(-ours, query_ids, gallery_ids, *cams,
                                        rank_denominator=denominator)
            reference_metrics = rank_metrics(-reference, query_ids, gallery_ids, *cams,
                                             rank_denominator=denominator)
            assert ours_metrics == reference_metrics


# -------------------------------------------------------------- the stored gallery, chunks
@pytest.mark.parametrize("expansions", [True, False])
def test_stored_gallery_neighbours_give_the_same_distances(expansions):
    query, gallery, *_ = problem(25, 140, people=10, seed=1)
    neighbours = gallery_neighbours(gallery, 20, expansions=expansions)
    assert neighbours["k1"] == 20 and neighbours["gallery_size"] == 140
    stored = rerank_queries(query, gallery, neighbours, 6, 0.3)
    torch.testing.assert_close(stored, k_reciprocal_rerank(query, gallery, 20, 6, 0.3),
                               rtol=0, atol=1e-6)
    # The same store serves other queries too (here: a single one, and the gallery's own).
    for others in (query[:1], gallery[:7]):
        torch.testing.assert_close(rerank_queries(others, gallery, neighbours, 6, 0.3),
                                   k_reciprocal_rerank(others, gallery, 20, 6, 0.3),
                                   rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="k1=10 differs from the k1=20"):
        rerank_queries(query, gallery, neighbours, 6, 0.3, k1=10)


def test_chunks_equal_the_whole():
    query, gallery, *_ = problem(23, 90, people=8, seed=2)
    whole = k_reciprocal_rerank(query, gallery, 20, 6, 0.3)
    starts, blocks = [], []
    for start, block in k_reciprocal_rerank_chunks(query, gallery, 20, 6, 0.3, chunk_size=5):
        starts.append(start)
        blocks.append(block)
    assert starts == [0, 5, 10, 15, 20] and [b.shape[0] for b in blocks] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat(blocks), whole)
    neighbours = gallery_neighbours(gallery, 20)
    stored = torch.cat([block for _, block in rerank_queries_chunks(
        query, gallery, neighbours, 6, 0.3, chunk_size=4)])
    torch.testing.assert_close(stored, whole, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- memory
def _status_bytes(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def _reset_peak_rss() -> None:
    """Make the peak resident size (VmHWM) the current one (Linux, 4.0 on)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as error:
        pytest.skip(f"cannot reset the peak resident size here ({error}): Linux only")
    if _status_bytes("VmHWM") > _status_bytes("VmRSS") + 16 * 2**20:
        pytest.skip("this kernel does not reset the peak resident size (clear_refs 5)")


def test_memory_is_a_small_fraction_of_the_dense_algorithms():
    """2,000 queries x 10,000 photos: the dense algorithm holds 20 bytes per pair of the
    12,000 items (2.9 GB); ours, the [Q, G] result (80 MB) included, must stay under a
    tenth of that. Measured as the growth of the process's peak resident size."""
    n_query, n_gallery = 2000, 10000
    generator = torch.Generator().manual_seed(0)
    feats, _ = features(n_query + n_gallery, 64, generator, people=1500)
    query, gallery = feats[:n_query].clone(), feats[n_query:].clone()
    del feats
    k_reciprocal_rerank(query[:50], gallery[:500])  # load lazily initialised kernels first
    _reset_peak_rss()
    before = _status_bytes("VmRSS")
    distances = k_reciprocal_rerank(query, gallery, 20, 6, 0.3)
    peak = _status_bytes("VmHWM") - before
    dense = dense_bytes(n_query, n_gallery)
    assert distances.shape == (n_query, n_gallery) and bool(torch.isfinite(distances).all())
    message = (f"sparse re-ranking of {n_query} x {n_gallery}: peak {peak / 2**20:.0f} MB "
               f"(result {distances.numel() * 4 / 2**20:.0f} MB included) against the dense "
               f"algorithm's {dense / 2**20:.0f} MB")
    print(message)
    assert peak * 10 < dense, message


# ------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize("k1, k2, lambda_value, message", [
    (20, 21, 0.3, "k2=21 must be an integer from 1 to k1 (20)"),
    (20, 0, 0.3, "k2=0 must be an integer from 1 to k1 (20)"),
    (0, 1, 0.3, "k1=0 must be an integer >= 1"),
    (20.0, 6, 0.3, "k1=20.0 must be an integer >= 1"),
    (True, 1, 0.3, "k1=True must be an integer >= 1"),
    (20, 6, -0.1, "lambda_value=-0.1 must be a number from 0 to 1"),
    (20, 6, 1.5, "lambda_value=1.5 must be a number from 0 to 1"),
])
def test_bad_parameters_are_one_line_errors(k1, k2, lambda_value, message):
    with pytest.raises(ValueError) as raised:
        check_parameters(k1, k2, lambda_value)
    assert str(raised.value) == message
    query, gallery, *_ = problem(3, 10)
    with pytest.raises(ValueError, match=re.escape(message)):
        k_reciprocal_rerank(query, gallery, k1, k2, lambda_value)


def test_features_must_be_normalised():
    query, gallery, *_ = problem(3, 10)
    with pytest.raises(ValueError, match="query_feats must be L2-normalised: row 1 has norm 2"):
        k_reciprocal_rerank(torch.cat([query[:1], 2 * query[1:]]), gallery)


@pytest.mark.parametrize("override, message", [
    ("test.rerank_k2=30", "test.rerank_k2=30 must be an integer from 1 to test.rerank_k1 (20)"),
    ("test.rerank_k1=0", "test.rerank_k1=0 must be an integer >= 1"),
    ("test.rerank_lambda=1.5", "test.rerank_lambda=1.5 must be a number from 0 to 1"),
])
def test_config_names_the_bad_key(override, message):
    cfg = load_config(None, ["test.rerank=true", override])
    with pytest.raises(ConfigError) as raised:
        rerank_setting(cfg)
    assert str(raised.value) == f"{message} (test.rerank=true)"
    # Off, the parameters are not used, so not checked.
    assert rerank_setting(load_config(None, [override])) is None
    assert rerank_setting(load_config(None, ["test.rerank=true"])) == \
        {"k1": 20, "k2": 6, "lambda": 0.3}


# ----------------------------------------------------------------------- test.py end to end
def test_test_py_refuses_bad_parameters_before_encoding(market_run, tmp_path, monkeypatch,
                                                        capsys):
    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded before the parameters were checked")

    monkeypatch.setattr(engine.stages, "encode_images", no_encoding)
    with pytest.raises(SystemExit) as exit_info:
        test_entry.main(["--checkpoint", str(market_run / "checkpoint_best.pth"),
                         f"output_dir={tmp_path}", "test.rerank=true", "test.rerank_k2=21"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err == ["error: test.rerank_k2=21 must be an integer from 1 to test.rerank_k1 (20) "
                   "(test.rerank=true)"]
    assert not (tmp_path / "results.json").exists()


def _spy(monkeypatch, name: str) -> list:
    """Record the arguments and result of every call of ``engine.stages.<name>``."""
    calls, original = [], getattr(engine.stages, name)

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(engine.stages, name, spy)
    return calls


def test_test_py_reranks_every_stage2_task(market_run, tmp_path, monkeypatch, capsys):
    checkpoint = str(market_run / "checkpoint_best.pth")
    options = ["test.rounds=1", "test.multi_query=true", "test.visualize=2"]
    plain = test_entry.main(["--checkpoint", checkpoint, f"output_dir={tmp_path / 'plain'}",
                             *options])
    calls = _spy(monkeypatch, "retrieval")
    shown = _spy(monkeypatch, "ranked_examples")
    reranked = test_entry.main(["--checkpoint", checkpoint, f"output_dir={tmp_path / 'rr'}",
                                *options, "test.rerank=true", "test.rerank_k1=8",
                                "test.rerank_k2=3", "test.rerank_lambda=0.2"])
    setting = {"k1": 8, "k2": 3, "lambda": 0.2}
    saved = json.loads((tmp_path / "rr" / "results.json").read_text())
    assert saved["rerank"] == reranked["rerank"] == setting
    assert json.loads((tmp_path / "plain" / "results.json").read_text())["rerank"] is False
    assert "re-ranked (k1=8, k2=3, lambda=0.2)" in capsys.readouterr().out
    assert set(reranked["tasks"]) == set(plain["tasks"]) == {
        "interactive", "sketch_only", "text_only", "interactive_mq", "sketch_only_mq"}

    # Five tasks and two rounds, each ranked from the re-ranked distances of its features.
    assert len(calls) == 7
    for args, kwargs, metrics in calls:
        bound = dict(zip(("query_feats", "gallery_feats", "query_ids", "gallery_ids"), args),
                     **kwargs)
        assert bound["rerank"] == setting
        distances = k_reciprocal_rerank(F.normalize(bound["query_feats"], dim=1),
                                        F.normalize(bound["gallery_feats"], dim=1), 8, 3, 0.2)
        assert bound.get("query_cams") is None  # stage 2 ranks the whole gallery
        expected = rank_metrics(-distances, torch.as_tensor(bound["query_ids"]),
                                torch.as_tensor(bound["gallery_ids"]),
                                rank_denominator=bound["rank_denominator"])
        assert metrics == expected
    rows = [(task, metric) for task in plain["tasks"] for metric in plain["tasks"][task]]
    assert any(reranked["tasks"][task][metric] != plain["tasks"][task][metric]
               for task, metric in rows), "re-ranking changed no metric"
    assert [entry["round"] for entry in reranked["rounds"]] == [0, 1]

    # The rank pictures follow the re-ranked order.
    ((args, kwargs, examples),) = shown
    query_feats, gallery_feats, eval_set = args[:3]
    scores = similarity_scores(query_feats, gallery_feats, setting)
    for example in examples:
        row = [str(path) for path in eval_set.sketch_paths].index(example["query"])
        top = scores[row].topk(len(example["ranked"])).indices.tolist()
        assert example["ranked"] == [str(eval_set.gallery_paths[g]) for g in top]
        assert example["scores"] == pytest.approx(scores[row, top].tolist())
    assert len(list((tmp_path / "rr" / "vis").iterdir())) == 2


def test_test_py_reranks_stage1_tasks(stage1_run, tmp_path, monkeypatch):
    calls = _spy(monkeypatch, "retrieval")
    results = test_entry.main(["--checkpoint", str(stage1_run / "checkpoint_best.pth"),
                               f"output_dir={tmp_path}", "test.rerank=true"])
    assert results["rerank"] == {"k1": 20, "k2": 6, "lambda": 0.3}
    assert set(results["tasks"]) == {"text_to_image", "sketch_to_image"}
    assert len(calls) == 2 and all(kwargs["rerank"] == results["rerank"]
                                   for _, kwargs, _ in calls)
    # sketch->image leaves out photos of the query's person and camera after re-ranking.
    (sketch_call,) = [call for call in calls if call[0][4] is not None]
    args, kwargs, metrics = sketch_call
    distances = k_reciprocal_rerank(F.normalize(args[0], dim=1), F.normalize(args[1], dim=1))
    assert metrics == rank_metrics(-distances, *(torch.as_tensor(a) for a in args[2:6]),
                                   rank_denominator=kwargs["rank_denominator"])


def test_training_never_reranks(tiny_clip_path, synthetic_root, tmp_path, monkeypatch):
    """test.rerank is test.py's: the evaluations that pick checkpoint_best stay plain."""
    import train_adapt
    from tests.conftest import tiny_overrides
    calls = _spy(monkeypatch, "retrieval")
    train_adapt.main(["--config", "config/TriPEDES_pretrain.yaml",
                      *tiny_overrides(tiny_clip_path, synthetic_root, tmp_path,
                                      **{"data.dataset": "rstpreid", "test.rerank": "true"})])
    assert calls and all(kwargs["rerank"] is None for _, kwargs, _ in calls)


# ------------------------------------------------------------------------- engine.compare
def test_compare_warns_when_one_side_is_re_ranked(tmp_path, capsys):
    block = {"tasks": {"interactive": {m: 10.0 for m in ("R1", "R5", "R10", "mAP", "mINP")}}}
    plain = tmp_path / "plain"
    reranked = tmp_path / "reranked"
    for folder, rerank in ((plain, False), (reranked, {"k1": 20, "k2": 6, "lambda": 0.3})):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"dataset": "mask1k", "rerank": rerank,
                                                         **block}))
    compare.main([str(plain), str(reranked), "--out", str(tmp_path / "c.md")])
    screen = capsys.readouterr()
    warning = ("warning: A is not re-ranked and B re-ranked (k1=20, k2=6, lambda=0.3): the "
               "differences include the re-ranking's")
    assert screen.err.strip() == warning
    assert f"B: {reranked} (mask1k, re-ranked (k1=20, k2=6, lambda=0.3))" in screen.out
    assert warning in (tmp_path / "c.md").read_text()
    # Both re-ranked the same way, or a file from before the key (plain) against a plain
    # one: no warning.
    compare.main([str(reranked), str(reranked)])
    (plain / "results.json").write_text(json.dumps({"dataset": "mask1k", **block}))
    compare.main([str(plain), str(tmp_path / "plain" / "results.json")])
    assert capsys.readouterr().err == ""
