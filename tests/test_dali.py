"""DALI pipeline in CPU mode: same ids, captions and pixels as a plain webdataset read;
each sample once per epoch across ranks; flips swap left/right in the captions; index files used."""

import io
import json
import os
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

dali = pytest.importorskip("pipeline.loading.dali")
wds = pytest.importorskip("webdataset")

from pipeline.errors import CapgenError  # noqa: E402
from pipeline.loading.mirror import mirror_ids  # noqa: E402
from pipeline.shards.wds_index import index_path, index_shards, read_samples  # noqa: E402
from pipeline.text import TokenTable, Vocabulary  # noqa: E402

SIZE = 64
SHARDS = (7, 4)  # uneven, and 11 samples: no batch size below divides it
CONTRACT = {"image_ids", "tokens", "lengths", "images"}  # pipeline/loading/batches.py's batch fields
CAPTIONS = [
    "a red circle on the left",
    "the square is right of the circle",
    "a blue square on the right side",
    "shapes from left to right",
]


def image(rng):
    """Dark left half, bright right half, plus texture: a flip is visible."""
    x = rng.integers(0, 60, (SIZE, SIZE, 3))
    x[:, SIZE // 2 :] += 150
    return x.astype(np.uint8)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """A shard set per the contract: key = str(image_id), jpg + json, tokens.npz, vocab.json."""
    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    image_id, caps = 17, {}
    for s, n in enumerate(SHARDS):
        with wds.TarWriter(str(out / f"test-{s:06d}.tar")) as sink:
            for _ in range(n):
                image_id += int(rng.integers(1, 1000))
                buf = io.BytesIO()
                Image.fromarray(image(rng)).save(buf, "JPEG", quality=90)
                caps[image_id] = [CAPTIONS[(image_id + k) % len(CAPTIONS)] for k in range(5)]
                meta = {
                    "image_id": image_id,
                    "file_name": f"{image_id}.jpg",
                    "split": "train",
                    "width": SIZE,
                    "height": SIZE,
                    "captions": caps[image_id],
                }
                sink.write({"__key__": str(image_id), "jpg": buf.getvalue(), "json": json.dumps(meta).encode()})
    vocab = Vocabulary.build([c for cs in caps.values() for c in cs], preset="seed", min_freq=1)
    vocab.save(out / "vocab.json")
    TokenTable.build(caps, vocab).save(out / "tokens.npz")
    return out


def reference(shard_dir):
    """[(image_id, jpg bytes, captions)] in tar order, via webdataset."""
    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    return [
        (int(s["__key__"]), s["jpg"], json.loads(s["json"])["captions"])
        for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    ]


def epoch(loader):
    return [{k: v.clone() for k, v in b.items()} for b in loader]


def hwc(images):
    """[B,3,H,W] uint8 -> [B,H,W,3] float pixels 0..255."""
    return images.float().permute(0, 2, 3, 1).numpy()


def left_brighter(images):
    """Which images were mirrored: image() makes the right half the bright one."""
    px = hwc(images.cpu())
    return (px[:, :, : SIZE // 3].mean(axis=(1, 2, 3)) > px[:, :, -SIZE // 3 :].mean(axis=(1, 2, 3))).tolist()


def assert_mirrored_captions(b, flips, vocab, table):
    """The captions of the flipped images, and only theirs, have left and right swapped."""
    stored, _ = table.rows(b["image_ids"].cpu().numpy())
    swap = {"left": "right", "right": "left"}
    for i, f in enumerate(flips):
        for k in range(stored.shape[1]):
            before, after = vocab.words(stored[i, k]), vocab.words(b["tokens"][i, k].cpu())
            assert after == ([swap.get(w, w) for w in before] if f else before)


def test_eval_matches_webdataset_read(shard_set):
    ref = reference(shard_set)
    vocab = Vocabulary.load(shard_set / "vocab.json")
    loader = dali.make_dali_loader(shard_set, batch_size=4, image_size=SIZE, train=False, num_threads=1)
    batches = epoch(loader)
    assert len(loader) == len(batches) == 3
    assert [len(b["image_ids"]) for b in batches] == [4, 4, 3]
    b = {k: torch.cat([x[k] for x in batches]) for k in batches[0]}
    assert b["image_ids"].tolist() == [r[0] for r in ref]
    assert set(batches[0]) == CONTRACT
    assert b["images"].dtype == torch.uint8 and b["images"].shape == (11, 3, SIZE, SIZE)
    assert b["tokens"].dtype == b["lengths"].dtype == torch.int64
    for i, (_, _jpg, caps) in enumerate(ref):
        assert b["tokens"][i].tolist() == [vocab.encode(c) for c in caps]
        assert b["lengths"][i].tolist() == [len(vocab.words(vocab.encode(c))) + 2 for c in caps]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(r[1])).convert("RGB")) for r in ref])
    assert np.abs(hwc(b["images"]) - pixels).max() < 0.5  # same uint8 pixels (both libjpeg-turbo)


@pytest.mark.parametrize("batch_size", [3, 5])
def test_each_sample_once_per_epoch_across_ranks(shard_set, batch_size):
    # 11 samples over 2 ranks: 5 + 6. With batch 5 one rank takes a step fewer.
    ids = {r[0] for r in reference(shard_set)}
    ranks = [
        dali.make_dali_loader(
            shard_set,
            batch_size=batch_size,
            image_size=SIZE,
            train=True,
            seed=3,
            num_threads=1,
            shard_id=r,
            num_shards=2,
            shuffle_buffer=4,
        )  # < N
        for r in range(2)
    ]
    orders = []
    for _ in range(3):
        seen = Counter()
        order = []
        last = []
        for loader in ranks:
            expected, steps = loader.num_samples(), len(loader)
            batches = epoch(loader)
            assert len(batches) == steps and sum(len(b["image_ids"]) for b in batches) == expected
            last.append([len(b["image_ids"]) for b in batches])
            for b in batches:
                assert b["images"].shape[1:] == (3, SIZE, SIZE) and len(b["tokens"]) == len(b["image_ids"])
                seen.update(b["image_ids"].tolist())
                order += b["image_ids"].tolist()
        assert seen == Counter(ids)
        assert sorted(last) == ([[3, 2], [3, 3]] if batch_size == 3 else [[5], [5, 1]])
        orders.append(order)
    assert orders[0] != orders[1] or orders[1] != orders[2]  # shuffled between epochs


def test_eval_ranks_take_turns_and_count_their_samples(shard_set):
    ranks = [
        dali.make_dali_loader(
            shard_set, batch_size=4, image_size=SIZE, train=False, num_threads=1, shard_id=r, num_shards=2
        )
        for r in range(2)
    ]
    ref = [r[0] for r in reference(shard_set)]
    for e in range(3):
        for r, loader in enumerate(ranks):
            expected = loader.num_samples()
            ids = [i for b in loader for i in b["image_ids"].tolist()]
            assert ids == (ref[:5] if (r + e) % 2 == 0 else ref[5:]) and len(ids) == expected


def test_drop_last_gives_full_batches_only(shard_set):
    ranks = [
        dali.make_dali_loader(
            shard_set,
            batch_size=5,
            image_size=SIZE,
            train=True,
            seed=3,
            num_threads=1,
            shard_id=r,
            num_shards=2,
            drop_last=True,
        )
        for r in range(2)
    ]
    for _ in range(2):
        sizes = [[len(b["image_ids"]) for b in loader] for loader in ranks]
        assert sizes == [[5], [5]] and [len(r) for r in ranks] == [1, 1] and ranks[0].num_samples() == 5


def test_flips_swap_left_right_in_the_captions(shard_set):
    vocab = Vocabulary.load(shard_set / "vocab.json")
    table = TokenTable.load(shard_set / "tokens.npz")
    loader = dali.make_dali_loader(shard_set, batch_size=11, image_size=SIZE, train=True, seed=1, num_threads=1)
    flips = []
    for _ in range(3):
        (b,) = epoch(loader)
        assert set(b) == CONTRACT
        flipped = left_brighter(b["images"])
        assert_mirrored_captions(b, flipped, vocab, table)
        flips += flipped
    assert 0 < sum(flips) < len(flips)


def test_mirror_ids_is_an_involution_swapping_left_right():
    vocab = Vocabulary.build(CAPTIONS, preset="seed", min_freq=1)
    perm = mirror_ids(vocab)
    assert sorted(perm) == list(range(len(vocab))) and (perm[perm] == np.arange(len(vocab))).all()
    moved = {vocab.itos[i]: vocab.itos[j] for i, j in enumerate(perm) if i != j}
    assert moved == {"left": "right", "right": "left"}
    assert (mirror_ids(Vocabulary.build(["a red circle"], min_freq=1)) == np.arange(6)).all()  # no pair: identity


def test_reader_goes_by_the_index(shard_set, tmp_path):
    for p in shard_set.glob("*.tar"):
        shutil.copy(p, tmp_path / p.name)
    for name in ("tokens.npz", "vocab.json"):
        shutil.copy(shard_set / name, tmp_path / name)
    tars = sorted(str(p) for p in tmp_path.glob("*.tar"))
    assert [w for _, _, w in index_shards(tmp_path)] == [True, True]
    # An index that lists only 2 samples of the first shard hides the rest of it.
    first = read_samples(tars[0])[:2]
    with open(index_path(tars[0]), "w") as f:
        f.write("v1.2 2\n" + "".join(" ".join(f"{e} {o} {s} {n}" for e, o, s, n in c) + "\n" for c in first))
    loader = dali.make_dali_loader(tmp_path, batch_size=4, image_size=SIZE, train=False, num_threads=1)
    ids = [i for b in loader for i in b["image_ids"].tolist()]
    ref = [r[0] for r in reference(shard_set)]
    assert ids == ref[:2] + ref[7:]


def test_bad_keys_and_unknown_ids_are_errors(shard_set, tmp_path):
    tail = np.zeros((1, dali.KEY_BYTES), np.uint8)
    name = b"x.tar:1536:abc.jpg"
    tail[0, -len(name) :] = np.frombuffer(name, np.uint8)
    with pytest.raises(CapgenError, match="'abc' is not an image id"):
        dali.key_ids(tail)
    loader = dali.make_dali_loader(shard_set, batch_size=4, image_size=SIZE, train=False, num_threads=1)
    with pytest.raises(CapgenError, match="no captions for image id 5"):
        loader.rows(np.array([5]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_decode_matches_cpu_and_stays_on_device(shard_set):
    cpu = epoch(dali.make_dali_loader(shard_set, batch_size=4, image_size=SIZE, train=False, num_threads=1))
    gpu = epoch(dali.make_dali_loader(shard_set, batch_size=4, image_size=SIZE, train=False, device_id=0))
    for c, g in zip(cpu, gpu, strict=True):
        assert all(v.is_cuda for v in g.values()) and set(g) == CONTRACT
        assert g["images"].dtype == torch.uint8
        for k in ("image_ids", "tokens", "lengths"):
            assert torch.equal(c[k], g[k].cpu())
        diff = np.abs(hwc(c["images"]) - hwc(g["images"].cpu()))
        assert diff.mean() < 1.0 and diff.max() < 16  # nvJPEG vs libjpeg-turbo IDCT/upsampling
    (b,) = epoch(dali.make_dali_loader(shard_set, batch_size=11, image_size=SIZE, train=True, device_id=0, seed=1))
    assert b["tokens"].is_cuda
    assert_mirrored_captions(
        b,
        left_brighter(b["images"]),
        Vocabulary.load(shard_set / "vocab.json"),
        TokenTable.load(shard_set / "tokens.npz"),
    )


@pytest.fixture(scope="module")
def built_set(tiny_shards):
    """A set made by synth + the shard builder (with its index files)."""
    return tiny_shards(images=10, seed=0, width=96, height=72, image_size=SIZE, shard_size=4, preset="seed")


def test_builder_shards_read_like_the_cpu_loader(built_set):
    """The same ids, tokens and pixels as pipeline/loading/batches.py reads, using the builder's index files."""
    from pipeline.loading.batches import ShardBatches
    from pipeline.shards.shardset import shard_paths

    tars = shard_paths(built_set)
    stamps = [os.path.getmtime(index_path(t)) for t in tars]
    got = epoch(dali.make_dali_loader(built_set, batch_size=4, image_size=SIZE, train=False, num_threads=1))
    ref = list(ShardBatches(tars, os.path.join(built_set, "tokens.npz"), batch_size=4, shuffle=False))
    assert [os.path.getmtime(index_path(t)) for t in tars] == stamps  # the builder's, kept
    assert len(got) == len(ref) == 3
    for g, r in zip(got, ref):
        for k in ("image_ids", "tokens", "lengths"):
            assert torch.equal(g[k], r[k])
        assert np.abs(hwc(g["images"]) - hwc(r["images"])).max() < 0.5


def test_make_loader_dali_runs_on_the_gpu_or_the_cpu_graph(built_set):
    """--loader dali: nvJPEG on a GPU; without one, DALI's CPU-mode graph. The same batch fields."""
    from pipeline.loading.loader import make_loader

    loader = make_loader(built_set, 4, shuffle=True, loader="dali")
    batches = epoch(loader)
    assert sorted(i for b in batches for i in b["image_ids"].tolist()) == sorted(
        TokenTable.load(os.path.join(built_set, "tokens.npz")).image_ids.tolist()
    )
    assert len(batches) == len(loader) and loader.num_samples() == 10
    gpu = torch.cuda.is_available()
    assert all(b["images"].is_cuda == gpu for b in batches)
    assert all(b["images"].dtype == torch.uint8 and set(b) == CONTRACT for b in batches)
    assert loader.source.path == built_set
    if not gpu:  # auto picks the CPU webdataset loader without a GPU
        assert make_loader(built_set, 4, shuffle=True, loader="auto").__class__.__name__ == "Loader"


def test_make_loader_dali_counts_per_rank(built_set):
    from pipeline.loading.loader import make_loader

    ranks = [make_loader(built_set, 4, shuffle=False, loader="dali", rank=r, world=2) for r in range(2)]
    ids = [[i for b in loader for i in b["image_ids"].tolist()] for loader in ranks]
    assert [loader.num_samples() for loader in ranks] == [len(i) for i in ids] == [5, 5]
    assert [len(loader) for loader in ranks] == [2, 2] and sorted(ids[0] + ids[1]) == sorted(
        TokenTable.load(os.path.join(built_set, "tokens.npz")).image_ids.tolist()
    )


def test_loader_benchmark_quick_runs_on_cpu(shard_set):
    from tools.bench.loaders import report, run

    r = run(str(shard_set), image_size=SIZE, device="cpu", quick=True)
    assert all(r[k] > 0 for k in ("dali", "torchvision", "cpu")) and r["batch_size"] == 16
    text = report(r)
    assert text.startswith("loaders on CPU") and "1.00x" in text and "--quick" in text


# ---------------------------------------------------------------- lost samples


def damaged_copy(built_set, tmp_path, kind):
    """A copy of built_set (shards of 4, 4 and 2) whose second shard has test_corrupt_data's
    damage `kind`; returns (folder, the damaged shard's path)."""
    from test_corrupt_data import CORRUPTIONS

    out = tmp_path / "set"
    shutil.copytree(built_set, out)
    shard = str(out / "train2014-000001.tar")
    CORRUPTIONS[kind][0](shard)
    return str(out), shard


def one_pass(loader):
    ids = sorted(i for b in loader for i in b["image_ids"].tolist())
    return ids, loader.lost()


@pytest.mark.parametrize(
    "kind, lost",
    [
        ("flipped header byte", 4),
        ("truncated at a member boundary", 1),
        ("flipped JPEG bytes", 1),
        ("empty", 4),
        ("deleted", 4),
    ],
)
def test_dali_counts_lost_samples_as_the_cpu_loader_does(built_set, tmp_path, capsys, kind, lost):
    from pipeline.loading.loader import make_loader

    folder, shard = damaged_copy(built_set, tmp_path, kind)
    cpu = one_pass(make_loader(folder, 4, shuffle=False, loader="cpu"))
    cpu_warnings = capsys.readouterr().err.splitlines()
    loader = make_loader(folder, 4, shuffle=False, loader="dali")
    assert loader.num_samples() == 10 - lost
    for _ in range(2):  # every pass reports its losses
        dali_ids, dali_lost = one_pass(loader)
        assert (dali_ids, dali_lost) == cpu and dali_lost == (lost, 10) and len(dali_ids) == 10 - lost
        (line,) = capsys.readouterr().err.splitlines()
        (cpu_line,) = cpu_warnings
        prefix = f"capgen: warning: {shard}: {lost} of 4 samples lost ("
        assert line.startswith(prefix) and cpu_line.startswith(prefix)
        if kind == "truncated at a member boundary":
            assert line == cpu_line == prefix + "samples missing)"
        if kind == "flipped JPEG bytes":
            first = sorted(TokenTable.load(os.path.join(built_set, "tokens.npz")).image_ids)[4]
            assert line == prefix + f"sample '{first}': JPEG data cut short or damaged (no start or end marker))"


def test_dali_counts_a_sample_without_captions_and_the_rest_of_its_shard_is_read(built_set, tmp_path, capsys):
    from pipeline.loading.loader import make_loader

    folder, _ = damaged_copy(built_set, tmp_path, "truncated at a member boundary")
    table = TokenTable.load(os.path.join(folder, "tokens.npz"))
    gone = int(sorted(table.image_ids)[0])  # the first shard's first sample
    keep = table.image_ids != gone
    np.savez(
        os.path.join(folder, "tokens.npz"),
        image_ids=table.image_ids[keep],
        tokens=table.tokens[keep],
        lengths=table.lengths[keep],
    )
    shards = [os.path.join(folder, f"train2014-00000{i}.tar") for i in range(2)]
    cpu = one_pass(make_loader(folder, 4, shuffle=False, loader="cpu"))
    cpu_err = sorted(capsys.readouterr().err.splitlines())
    dali_loader = make_loader(folder, 4, shuffle=False, loader="dali")
    assert one_pass(dali_loader) == cpu and cpu[1] == (2, 10) and gone not in cpu[0]
    assert (
        sorted(capsys.readouterr().err.splitlines())
        == cpu_err
        == [
            f"capgen: warning: {shards[0]}: 1 of 4 samples lost "
            f"(sample '{gone}': token table: no captions for image id {gone})",
            f"capgen: warning: {shards[1]}: 1 of 4 samples lost (samples missing)",
        ]
    )


def test_dali_ranks_count_the_lost_once(built_set, tmp_path, capsys):
    from pipeline.loading.loader import make_loader

    folder, shard = damaged_copy(built_set, tmp_path, "flipped JPEG bytes")
    ranks = [make_loader(folder, 4, shuffle=False, loader="dali", rank=r, world=2) for r in range(2)]
    passes = [one_pass(loader) for loader in ranks]
    assert [p[1] for p in passes] == [(1, 5), (0, 5)]  # 9 readable samples: 4 + 5; rank 0 reports the lost
    assert sorted(passes[0][0] + passes[1][0]) == one_pass(make_loader(folder, 4, shuffle=False, loader="cpu"))[0]
    assert capsys.readouterr().err.splitlines()[0].startswith(f"capgen: warning: {shard}: 1 of 4 samples lost (")


def test_dali_with_no_readable_sample_is_one_error(built_set, tmp_path, capsys):
    from pipeline.loading.loader import make_loader

    out = tmp_path / "set"
    shutil.copytree(built_set, out)
    for tar in out.glob("*.tar"):
        open(tar, "wb").close()
    with pytest.raises(CapgenError) as err:
        make_loader(out, 4, loader="dali")
    assert str(err.value) == f"{out}: no sample can be read; see the warnings above"
    assert capsys.readouterr().err.splitlines() == [
        f"capgen: warning: {out}/train2014-00000{i}.tar: {n} of {n} samples lost "
        f"({out}/train2014-00000{i}.tar: not a readable tar (empty file))"
        for i, n in enumerate((4, 4, 2))
    ]


def test_training_with_dali_refuses_an_epoch_past_max_lost(train_val, tmp_path):
    from test_corrupt_data import SHARD, TRAIN, capgen, corrupt_copy

    folder = corrupt_copy(train_val["train"], tmp_path, "truncated at a member boundary")
    dali_train = ["dali" if a == "cpu" else a for a in TRAIN]  # --loader dali
    base = ["train", "--train", folder, "--val", train_val["val"], *dali_train]
    p = capgen([*base, "--out", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.splitlines()[-1] == (
        f"capgen: error: {folder}: 3 of 24 samples could not be read this epoch "
        "(more than --max-lost 0.01); see the warnings above"
    )
    assert f"capgen: warning: {folder}/{SHARD}: 3 of 6 samples lost (samples missing)" in p.stderr.splitlines()
    p = capgen([*base, "--out", str(tmp_path / "run2"), "--max-lost", "0.2"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
