"""The gallery index of ``engine.gallery`` (format 2, a folder): conversion of format-1
files, resuming an interrupted build, incremental updates, indexing under torchrun, exact
search in chunks, FAISS search (recall, reuse, refresh, one line without faiss), re-ranking
with the stored neighbour lists (search.py and the app), bad --index values, and
bench.search at a tiny size."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import pytest
import torch
import torch.nn.functional as F

import app
import engine.gallery
import engine.models
import search
from engine.api import Retriever
from engine.gallery import (
    ANN_KINDS,
    AnnSettings,
    ann_search,
    build_ann,
    default_index_path,
    exact_topk,
    file_signature,
    list_images,
    read_index,
)
from model.tokenizer import tokenize
from utils.config import REPO_ROOT
from utils.rerank import k_reciprocal_rerank

# search.main and app.main set up logging on the captured standard output.
pytestmark = pytest.mark.usefixtures("restore_logging")

TEXT = "a young woman wearing a red top"


def checkpoint_of(run):
    return run / "checkpoint_best.pth"


def indexed(checkpoint, gallery, index, overrides=(), **options) -> Retriever:
    """The retriever of ``checkpoint`` on the CPU, ``gallery`` indexed in ``index``."""
    return Retriever.load(checkpoint, overrides, device="cpu").index(gallery, index, **options)


def ranking(retriever: Retriever, topk: int = 10) -> list:
    return [path for path, _ in retriever.search(None, [TEXT], topk=topk)]


def header(folder) -> dict:
    return json.loads((folder / "index.json").read_text())


def names(folder) -> list:
    return sorted(path.name for path in folder.iterdir())


@pytest.fixture
def log_lines(caplog):
    """The messages ``engine.gallery`` logs (INFO and up)."""
    caplog.set_level(logging.INFO, logger="engine.gallery")
    return lambda: [record.getMessage() for record in caplog.records
                    if record.name == "engine.gallery"]


# ------------------------------------------------------------------------ exact search
@pytest.mark.parametrize("k", [1, 10, 100])
def test_exact_topk_in_chunks_equals_a_full_topk(k):
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(1000, 32, generator=generator), dim=1).half()
    queries = F.normalize(torch.randn(7, 32, generator=generator), dim=1)
    full = (queries @ features.float().t()).topk(k, dim=1)
    for chunk_rows in (64, 333, 1000, 4096):
        scores, rows = exact_topk(features, queries, k, chunk_rows=chunk_rows)
        assert torch.equal(rows, full.indices), chunk_rows
        torch.testing.assert_close(scores, full.values)
    scores, rows = exact_topk(features[:5], queries, k, chunk_rows=2)  # k beyond the gallery
    assert rows.shape == (7, min(k, 5))
    assert torch.equal(rows, (queries @ features[:5].float().t()).topk(min(k, 5)).indices)


# ----------------------------------------------------------------- format-1 conversion
def write_format1(path, model_key, gallery, paths, features) -> None:
    """An index as the previous version wrote it: one torch.save file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "model": model_key, "paths": paths,
                "files": {p: file_signature(gallery / p) for p in paths},
                "features": features}, path)


@pytest.mark.parametrize("model", ["same", "another"])
@pytest.mark.parametrize("where", ["default", "index"])
def test_a_format1_index_is_converted_or_rebuilt(market_run, gallery, tmp_path, embedded,
                                                 log_lines, where, model):
    """At the old default name (``<name>-<hash>.pt`` beside the new default folder) or at
    --index itself: made with this model, its features are taken over without embedding
    anything; made with another, it is removed and the gallery embedded again."""
    checkpoint = checkpoint_of(market_run)
    reference = indexed(checkpoint, gallery, tmp_path / "reference")
    if where == "default":
        index, folder = None, default_index_path(checkpoint, gallery)
        legacy = folder.with_name(folder.name + ".pt")
    else:
        index = folder = legacy = tmp_path / "old-index.pt"
    key = reference.model_key if model == "same" else "another model"
    write_format1(legacy, key, gallery, reference.paths, reference.gallery.features.float())
    embedded.clear()
    converted = indexed(checkpoint, gallery, index)
    assert (folder / "index.json").is_file() and header(folder)["format"] == 2
    assert legacy == folder or not legacy.exists()
    leftovers = [path for path in folder.parent.iterdir()
                 if path.name.endswith((".format1", ".converting"))]
    assert leftovers == []
    if model == "same":
        assert embedded == []
        assert any(line.startswith(f"converted gallery index {legacy} (format 1, 35 photos) "
                                   f"to format 2 in {folder}") for line in log_lines())
    else:
        assert embedded == [len(reference.paths)]
        assert any("in an old format and was made with another model" in line
                   for line in log_lines())
    assert converted.paths == reference.paths
    assert torch.equal(converted.gallery.features, reference.gallery.features)
    assert ranking(converted) == ranking(reference)


# ---------------------------------------------------------------------- building
def test_an_interrupted_build_resumes(market_run, gallery, tmp_path, monkeypatch, log_lines):
    """A build stopped while embedding its third piece keeps the two it saved; the next run
    embeds only the rest, and the index equals one built without a stop."""
    checkpoint, index = checkpoint_of(market_run), tmp_path / "index"
    original, calls, stop_after = engine.models.encode_images, [], [2]

    def embed(encode, paths, *args, **kwargs):
        if len(calls) == stop_after[0]:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill in the middle of a piece
        calls.append(len(paths))
        return original(encode, paths, *args, **kwargs)

    monkeypatch.setattr(engine.models, "encode_images", embed)
    with pytest.raises(KeyboardInterrupt):
        indexed(checkpoint, gallery, index, save_every=10)
    assert calls == [10, 10]
    assert len(list((index / "pending").glob("*.npz"))) == 2
    assert not (index / "index.json").exists()
    stop_after[0] = None
    resumed = indexed(checkpoint, gallery, index, save_every=10)
    assert calls == [10, 10, 10, 5]  # only the 15 photos not saved yet
    assert "embedding 15 of 35 gallery photos (0 reused from " \
           f"{index}, 20 from an unfinished build)" in log_lines()
    assert names(index) == ["features-g1.npy", "index.json"]  # pending/ removed
    whole = indexed(checkpoint, gallery, tmp_path / "whole", save_every=10)
    assert resumed.gallery.index.files == whole.gallery.index.files
    assert torch.equal(resumed.gallery.features, whole.gallery.features)
    assert resumed.gallery.features.dtype == torch.float16
    # Each row is its own photo's feature (here embedded in one batch, so only close).
    direct = resumed.encoders.encode_images([gallery / path for path in resumed.paths])
    torch.testing.assert_close(resumed.gallery.features.float(), direct, atol=1e-3, rtol=0)


def test_changed_photos_make_a_new_generation(market_run, gallery, tmp_path, embedded):
    """Added, removed and touched photos: only the added and touched ones are embedded, the
    generation advances, and every file of the old one (features, FAISS index, neighbour
    lists) is removed."""
    checkpoint, index = checkpoint_of(market_run), tmp_path / "index"
    first = indexed(checkpoint, gallery, index, ann=AnnSettings("ivf"))
    indexed(checkpoint, gallery, index, rerank=True)
    assert embedded == [35]
    assert names(index) == ["features-g1.npy", "index.json", "ivf-g1-nlist1.faiss",
                            "neighbours-g1-k1_20.pt"]
    assert header(index)["generation"] == 1
    photos = sorted((gallery / "cam").iterdir())
    shutil.copy(photos[0], gallery / "cam" / "new_photo.jpg")  # added
    photos[1].unlink()  # removed
    os.utime(photos[2], ns=(1, 1))  # touched: the same bytes, another mtime
    updated = indexed(checkpoint, gallery, index)
    assert embedded == [35, 2]
    assert header(index)["generation"] == 2
    assert names(index) == ["features-g2.npy", "index.json"]
    assert updated.paths == list_images(gallery)
    assert "cam/new_photo.jpg" in updated.paths and f"cam/{photos[1].name}" not in updated.paths
    assert [f"cam/{photos[2].name}", photos[2].stat().st_size, 1] in updated.gallery.index.files
    old_row = {path: row for row, path in enumerate(first.paths)}
    kept = [row for row, path in enumerate(updated.paths)
            if path in old_row and path != f"cam/{photos[2].name}"]
    assert len(kept) == 33
    assert torch.equal(updated.gallery.features[kept],
                       first.gallery.features[[old_row[updated.paths[row]] for row in kept]])
    indexed(checkpoint, gallery, index)
    assert embedded == [35, 2] and header(index)["generation"] == 2  # nothing changed


@pytest.mark.slow
def test_indexing_under_torchrun_equals_one_process(market_run, gallery, tmp_path):
    """Two processes (gloo on the CPU) each embed their share and the main one merges: the
    same rows and the same float16 values as one process. Pieces of 6 photos in batches of
    8 make the batches of both builds the same, and one thread each their sums."""
    checkpoint = checkpoint_of(market_run)
    overrides = ["test.batch_size=8", "data.num_workers=0"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "search.py", "--index-only", "--checkpoint",
               str(checkpoint), "--gallery", str(gallery), "--index", str(tmp_path / "two"),
               "--device", "cpu", "--save-every", "6", *overrides]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=240, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"embedded 35 photos in [\d.]+ s: [\d.]+ images/s over 2 process\(es\)",
                     result.stdout), result.stdout
    assert result.stdout.count("index: ") == 1  # printed by the main process alone
    assert f"index: {tmp_path / 'two'} (35 photos, " in result.stdout
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process above: sums split over threads round apart
    try:
        one = indexed(checkpoint, gallery, tmp_path / "one", overrides, save_every=6)
    finally:
        torch.set_num_threads(threads)
    two = read_index(tmp_path / "two", one.model_key)
    assert two is not None and two.files == one.gallery.index.files
    assert torch.equal(two.features, one.gallery.features)
    assert names(tmp_path / "two") == ["features-g1.npy", "index.json"]


# ------------------------------------------------------------------------------ FAISS
@pytest.mark.parametrize("kind", ANN_KINDS)
def test_ann_recall_on_clustered_features(kind, tmp_path):
    """5,000 unit vectors of dim 64 around 50 centres: the default settings find at least
    95% of the exact top 10 (measured: 0.997 ivf, 0.9995 hnsw)."""
    from bench.search import MODEL_KEY, cluster_centres, synthetic_rows, write_gallery
    centres = cluster_centres(50, 64, seed=0)
    write_gallery(tmp_path / "index", 5000, 64, centres, noise=1.0, seed=0)
    stored = read_index(tmp_path / "index", MODEL_KEY)
    queries = synthetic_rows(200, 64, centres, noise=1.0, seed=1)
    _, truth = exact_topk(stored.features, queries, 10)
    settings = AnnSettings(kind)
    scores, found = ann_search(build_ann(stored.features, settings), settings, queries, 10)
    assert found.shape == (200, 10)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth)) / 2000
    assert recall >= 0.95, recall
    # The scores are the inner products of the stored (float16) features.
    expected = torch.einsum("qke,qe->qk", stored.features[found.flatten()].float()
                            .view(200, 10, -1), queries)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ANN_KINDS)
def test_ann_index_is_reused_and_rebuilt_when_photos_change(kind, market_run, gallery,
                                                            tmp_path, monkeypatch):
    checkpoint, index = checkpoint_of(market_run), tmp_path / "index"
    builds, original = [], engine.gallery.build_ann

    def counting(features, settings, *args, **kwargs):
        builds.append(len(features))
        return original(features, settings, *args, **kwargs)

    monkeypatch.setattr(engine.gallery, "build_ann", counting)
    exact = indexed(checkpoint, gallery, index)
    first = indexed(checkpoint, gallery, index, ann=AnnSettings(kind))
    (built,) = index.glob(f"{kind}-g1-*.faiss")
    stamp = built.stat().st_mtime_ns
    second = indexed(checkpoint, gallery, index, ann=AnnSettings(kind))
    assert builds == [35] and built.stat().st_mtime_ns == stamp  # read, not rebuilt
    # 35 photos: one IVF list, and an HNSW search that keeps 256 candidates, see them all.
    assert ranking(first) == ranking(second) == ranking(exact)
    os.utime(sorted((gallery / "cam").iterdir())[0], ns=(1, 1))
    indexed(checkpoint, gallery, index, ann=AnnSettings(kind))
    assert builds == [35, 35]
    assert not built.exists() and len(list(index.glob(f"{kind}-g2-*.faiss"))) == 1


@pytest.mark.parametrize("entry", ["search", "app"])
def test_ann_without_faiss_is_one_line_before_embedding(entry, market_run, gallery, tmp_path,
                                                        monkeypatch, embedded, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    argv = ["--checkpoint", str(checkpoint_of(market_run)), "--gallery", str(gallery),
            "--index", str(tmp_path / "index"), "--device", "cpu", "--ann", "hnsw"]
    with pytest.raises(SystemExit) as exit_info:
        if entry == "search":
            search.main([*argv, "--text", TEXT])
        else:
            app.main([*argv, "--port", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --ann needs faiss-cpu (pip install faiss-cpu)\n"
    assert embedded == [] and not (tmp_path / "index").exists()


# ------------------------------------------------------------------------- re-ranking
def reranked(retriever: Retriever, text: str = TEXT) -> list:
    """The gallery in the order of ``k_reciprocal_rerank`` for ``text``, computed here from
    scratch on the retriever's (stored float16) features."""
    model = retriever.encoders.model
    with torch.no_grad():
        query = model.encode_text(tokenize([text], model.clip.context_length))
    cfg = retriever.cfg.test
    distances = k_reciprocal_rerank(query, retriever.gallery.features.float(), cfg.rerank_k1,
                                    cfg.rerank_k2, cfg.rerank_lambda)[0]
    return [retriever.paths[row] for row in distances.argsort(stable=True).tolist()]


def test_rerank_ranks_as_k_reciprocal_rerank(market_run, gallery, tmp_path, monkeypatch,
                                             capsys):
    """search.py --rerank: the order of ``k_reciprocal_rerank`` on the same features, the
    scores still cosine similarities; the gallery's neighbour lists are computed once,
    stored in the index and read by the next start."""
    checkpoint, index = checkpoint_of(market_run), tmp_path / "index"
    computed, original = [], engine.gallery.gallery_neighbours

    def counting(features, k1, *args, **kwargs):
        computed.append((len(features), k1))
        return original(features, k1, *args, **kwargs)

    monkeypatch.setattr(engine.gallery, "gallery_neighbours", counting)
    found = search.main(["--checkpoint", str(checkpoint), "--gallery", str(gallery),
                         "--index", str(index), "--device", "cpu", "--text", TEXT,
                         "--rerank", "--topk", "35"])
    assert computed == [(35, 20)] and (index / "neighbours-g1-k1_20.pt").is_file()
    again = indexed(checkpoint, gallery, index, rerank=True)
    assert computed == [(35, 20)]  # read from the index
    expected = reranked(again)
    assert [path for path, _ in found] == expected
    assert [path for path, _ in again.search(None, [TEXT], topk=5)] == expected[:5]
    plain = indexed(checkpoint, gallery, index)
    assert ranking(plain, 35) != expected  # re-ranking changes this order
    cosine = dict(plain.search(None, [TEXT], topk=35))
    assert all(score == pytest.approx(cosine[path], abs=1e-5) for path, score in found)
    assert f"{1:>4}  {found[0][1]:>7.4f}  {found[0][0]}" in capsys.readouterr().out


@pytest.mark.slow
def test_app_with_rerank_serves_reranked_results(market_run, gallery, tmp_path):
    checkpoint, index = checkpoint_of(market_run), tmp_path / "index"
    expected = reranked(indexed(checkpoint, gallery, index, rerank=True))
    command = [sys.executable, "app.py", "--checkpoint", str(checkpoint), "--gallery",
               str(gallery), "--index", str(index), "--port", "0", "--device", "cpu",
               "--rerank"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.match(r"serving (http://127\.0\.0\.1:\d+/) ", line)
        assert match, f"unexpected first line {line!r}"
        body = json.dumps({"feedback": [TEXT], "topk": 35}).encode()
        request = urllib.request.Request(match[1] + "api/search", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert [result["id"] for result in answer["results"]] == expected
    finally:
        process.terminate()
        process.communicate(timeout=20)


# -------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("options, expected", [
    (["--rerank", "--ann", "hnsw"], "--rerank ranks the whole gallery exactly; leave out --ann"),
    (["--ann", "ivf", "--ann-nprobe", "0"], "--ann-nprobe and --ann-ef must be at least 1"),
    (["--save-every", "0"], "--save-every must be at least 1"),
    (["--index-only"], "--index-only builds the index and searches nothing; leave out "
                       "--sketch, --text, --interactive and --out"),
])
def test_bad_options_are_refused(options, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--checkpoint", "x.pth", "--gallery", str(tmp_path), "--text", TEXT,
                     *options])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.rstrip().endswith(f"error: {expected}")


@pytest.mark.parametrize("problem", ["file", "folder"])
def test_a_bad_index_path_is_one_line_and_left_alone(problem, market_run, gallery, tmp_path,
                                                     embedded, capsys):
    """--index naming a file that is not an index, or a folder of other files (here the
    gallery itself): refused before anything is embedded, and nothing there changes."""
    if problem == "file":
        target = tmp_path / "notes.pt"
        target.write_bytes(b"my notes")
        expected = f"error: {target} is a file but not a gallery index"
    else:
        target = gallery
        expected = f"error: {target} holds other files (e.g. cam), not a gallery index"

    def snapshot():
        paths = [target] if target.is_file() else sorted(target.rglob("*"))
        return [(p, p.stat().st_mtime_ns, p.is_file() and p.read_bytes()) for p in paths]

    before = snapshot()
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--checkpoint", str(checkpoint_of(market_run)), "--gallery", str(gallery),
                     "--index", str(target), "--device", "cpu", "--text", TEXT])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1
    assert embedded == [] and snapshot() == before


# -------------------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_bench_search_at_a_tiny_size(tmp_path, capsys):
    from bench import search as bench_search
    jsonl = tmp_path / "search.jsonl"
    records = bench_search.main(["--gallery", "2000", "--dim", "32", "--clusters", "20",
                                 "--queries", "20", "--ef", "16,64", "--jsonl", str(jsonl)])
    assert [(r["method"], r["settings"].get("ef_search")) for r in records] == [
        ("exact", None), ("ivf", None), ("hnsw", 16), ("hnsw", 64)]
    assert records[0]["recall_at_10"] == 1.0
    assert all(r["recall_at_10"] >= 0.9 for r in records), records
    assert records[1]["settings"] == {"nlist": 45, "nprobe": AnnSettings.nprobe}
    for record in records:
        assert record["p95_ms"] >= record["p50_ms"] > 0
        assert record["peak_rss_mb"] >= record["start_rss_mb"] > 0
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == records
    out = capsys.readouterr().out
    last = records[-1]
    assert "recall@10" in out and out.rstrip().endswith(
        f"{last['peak_rss_mb'] - last['start_rss_mb']:>9,}{last['disk_mb']:>9,}")
