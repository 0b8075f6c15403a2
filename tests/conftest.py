import os

# Before torch is imported anywhere: idle OpenMP threads sleep instead of spinning,
# which on a 2-core machine keeps a busy neighbour from slowing each test 10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# `capgen shards build` takes its job index and count from a Slurm array task's
# environment: a suite run inside one must not build a fraction of each test's set.
for _name in [k for k in os.environ if k.startswith("SLURM_ARRAY_")]:
    del os.environ[_name]


import pytest  # noqa: E402

from pipeline.shards import build as shards  # noqa: E402
from pipeline.sources.coco import read_coco  # noqa: E402
from pipeline.synth.generator import synthesize  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny tensors: a second intra-op thread only adds overhead."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """Factory: tiny_shards(images=, seed=, ...) -> folder of a shard set that the builder
    made from synthetic images (pipeline/synth/generator.py); a val2014 set takes the train2014
    set's vocabulary. Each is made once per session for its arguments, so tests read
    these folders and write elsewhere."""
    datasets, sets = {}, {}

    def make(*, images, seed, width, height, image_size, shard_size, preset, val_fraction=0.0, split="train2014"):
        data = (images, seed, width, height, val_fraction)
        if data not in datasets:
            datasets[data] = root = tmp_path_factory.mktemp("tiny_shards")
            synthesize(
                str(root / "data"), images, seed=seed, val_fraction=val_fraction, width=width, height=height, workers=1
            )
        key = data + (image_size, shard_size, preset, split)
        if key not in sets:
            root = datasets[data]
            vocab = None
            if split == "val2014":
                train = make(
                    images=images,
                    seed=seed,
                    width=width,
                    height=height,
                    image_size=image_size,
                    shard_size=shard_size,
                    preset=preset,
                    val_fraction=val_fraction,
                )
                vocab = os.path.join(train, "vocab.json")
            out = str(root / f"{split}-{image_size}px-{shard_size}-{preset}")
            shards.build(
                read_coco(str(root / "data"), split),
                out,
                shards.Options(name=split, image_size=image_size, shard_size=shard_size),
                {},
                workers=1,
                vocab=vocab,
                preset=preset,
                min_freq=1,
                progress=False,
            )
            sets[key] = out
        return sets[key]

    return make


@pytest.fixture(scope="session")
def train_val(tiny_shards, tmp_path_factory):
    """The trainer tests' data: shard sets (32 px, shards of 6) of 24 train / 6 val synthetic
    images and their resnet18-layer3 feature caches (random init), made once per session:
    {"train", "val", "train_h5", "val_h5"}. Tests read them and write elsewhere."""
    from model.infer.extract import extract

    root = tmp_path_factory.mktemp("train_val")
    out = {}
    for split, name in (("train2014", "train"), ("val2014", "val")):
        out[name] = tiny_shards(
            images=30,
            seed=11,
            width=48,
            height=40,
            val_fraction=0.2,
            image_size=32,
            shard_size=6,
            preset="coco",
            split=split,
        )
        with pytest.warns(UserWarning, match="random init"):
            extract(
                out[name],
                str(root / f"{name}.h5"),
                "resnet18",
                "layer3",
                "none",
                batch_size=8,
                workers=0,
                progress=False,
            )
        out[name + "_h5"] = str(root / f"{name}.h5")
    return out


@pytest.fixture(scope="session")
def tiny_trained_checkpoint(train_val, tmp_path_factory):
    """A 16-d decoder trained 15 epochs on train_val's feature caches (a frozen random-init
    resnet18 to layer3 at 32 px, rebuilt from the config on load), whose captions differ from
    image to image: its RUN/last folder, made once per session. Tests read it and write elsewhere."""
    from model.train.args import TrainArgs
    from model.train.loop import train

    out = str(tmp_path_factory.mktemp("tiny_trained") / "run")
    args = TrainArgs(
        train=train_val["train_h5"],
        val=train_val["val_h5"],
        out=out,
        epochs=15,
        batch_size=4,
        decoder_lr=1e-2,
        embed_dim=16,
        attention_dim=16,
        hidden_dim=16,
        dropout=0.1,
        val_images=1,
        workers=0,
        log_every=100,
        progress=False,
        seed=3,
    )
    train(args)
    return os.path.join(out, "last")
