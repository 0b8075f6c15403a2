"""TrainArgs: every training setting and the one place its default is written.

Fields made with `option()` are also `capgen train`'s options, in this order:
tools/cli/main.py turns each into --NAME (underscores as dashes) with this default and
help. The others (gradient clipping, LR schedule, ...) are for code callers only.
Kept free of torch so that the command line can read it at import time.
"""

from dataclasses import MISSING, dataclass, field

from pipeline.errors import CapgenError

ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "convnet")


def option(default=MISSING, help=None, choices=None, folder=False):
    """A TrainArgs field that `capgen train` offers; choices: the allowed values;
    folder: the value names a folder (the command line refuses a file)."""
    return field(default=default, metadata={"cli": {"help": help, "choices": choices, "folder": folder}})


@dataclass
class TrainArgs:
    """Every training setting (`capgen train`'s options, and a few for code callers); checked on creation.

    Example (a small CNN trained from scratch with the decoder, as the demo does; loader "auto"
    and device None take DALI, bf16 and the GPU when there is one, else the CPU)::

        >>> args = capgen.TrainArgs(train="shards/train", val="shards/val", out="run", epochs=3, batch_size=8,
        ...                         encoder="convnet", encoder_stop="layer3", encoder_weights="none",
        ...                         fine_tune_encoder=True, encoder_lr=1e-3, workers=0)
        >>> capgen.train(args)
    """

    train: str = option(help="Shard set folder or feature cache .h5.")
    val: str = option(help="Shard set folder or feature cache .h5.")
    out: str = option(help="Run folder (last/, best/, log.jsonl).", folder=True)
    epochs: int = option(20)
    batch_size: int = option(32, "Images per step (each with its captions).")
    encoder: str | None = option(
        None,
        "Default resnet50 (for a feature cache: the cache's); convnet: a small CNN trained "
        "from scratch (model/nets/convnet.py; needs --fine-tune-encoder).",
        ENCODERS,
    )
    encoder_stop: str | None = option(None, "Default layer4.", ("layer2", "layer3", "layer4"))
    encoder_weights: str | None = option(None, "imagenet (default), none, or a weights file.")
    fine_tune_encoder: bool = option(
        False, "Train layers 3-4 of the encoder too (every layer of a convnet; shard sets only)."
    )
    download: bool = option(
        False, "Allow fetching torchvision's ImageNet weights when they are not in the local cache."
    )
    embed_dim: int = option(512)
    attention_dim: int = option(512)
    hidden_dim: int = option(512)
    dropout: float = option(0.5)
    decoder_lr: float = option(4e-4)
    encoder_lr: float = option(1e-4)
    grad_clip: float = 5.0
    alpha_c: float = 1.0  # weight of the doubly stochastic attention term
    lr_schedule: str = option(
        "plateau",
        "plateau: LR x 0.8 after 3 epochs without a better val score; "
        "cosine: down towards 0 over --epochs (a run of known length).",
        ("plateau", "cosine"),
    )
    lr_factor: float = 0.8  # ReduceLROnPlateau on val BLEU-4
    lr_patience: int = 3
    patience: int = option(20, "Early stopping: epochs without a better val BLEU-4.")
    beam: int = option(1, "Validation decoding (1: greedy).")
    val_images: int | None = option(None, "Validate on the first N val images only.")
    resume: bool = option(False, "Continue from OUT/last exactly.")
    # Self-critical training (model/train/scst.py). Its learning rate is the SCST paper's (Rennie et al.
    # 2017 fine-tune with 5e-5): the sampled-reward gradient is noisy, and the CE rate (4e-4) drifts
    # the model away from its cross-entropy start faster than the reward can guide it.
    scst: bool = option(False, "Self-critical training with a CIDEr-D reward, from --init's weights.")
    init: str | None = option(
        None,
        "Checkpoint folder (RUN/best) whose weights, encoder and vocabulary --scst continues (a fresh training state).",
        folder=True,
    )
    scst_samples: int = option(5, "Captions sampled per image (--scst).")
    scst_baseline: str = option(
        "mean", "mean: the image's other samples' mean reward; greedy: its greedy caption's reward.", ("mean", "greedy")
    )
    scst_bad_ending_penalty: float = option(
        0.0, "Taken off the reward of a caption ending on a, with, of, the, and, on or in (--scst)."
    )
    scst_lr: float = option(5e-5, "Learning rate of --scst (decoder, and the encoder when fine-tuned).")
    compile: bool = option(False, "torch.compile the training step.")
    bf16: str = option(
        "gpu",
        "bf16 autocast: gpu (on a GPU only), auto (also on a CPU with bf16 arithmetic: AVX512-BF16 or AMX), "
        "off. CAPGEN_BF16=0 turns it off everywhere.",
        ("gpu", "auto", "off"),
    )
    workers: int = option(2, "Loader processes per rank.")
    loader: str = option(
        "auto",
        "auto: DALI on a GPU, else the CPU webdataset loader; dali without a GPU runs DALI's CPU graph.",
        ("auto", "cpu", "dali"),
    )
    seed: int = option(0)
    log_every: int = option(50, "Steps between log records.")
    device: str | None = option(None, "cuda, cpu, ... (default: cuda when present).")
    progress: bool = True
    feature_samples: int = 512  # images used to estimate channel stats (image sources)
    max_lost: float = option(
        0.01,
        "Fail when more than this share of an epoch's samples cannot be read "
        "(corrupt or missing shards); 0 allows none.",
    )

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Refuse option values that cannot train: the one place they are checked."""
        _check(self, "decoder_lr", "encoder_lr", positive_finite=True)
        _check(
            self,
            "batch_size",
            "embed_dim",
            "attention_dim",
            "hidden_dim",
            "epochs",
            "beam",
            "patience",
            "log_every",
            "feature_samples",
            "lr_patience",
            at_least=1,
        )
        _check(self, "val_images", at_least=1, optional=True)
        _check(self, "workers", at_least=0)
        _check(self, "grad_clip", positive_finite=True)
        _check(self, "max_lost", in_unit=True, closed=True)
        _check(self, "alpha_c", at_least_zero=True)
        _check(self, "dropout", in_unit=True)
        _check(self, "lr_factor", in_unit=True, open_low=True)


def _name(field_name):
    return "--" + field_name.replace("_", "-")


def _check(
    args,
    *names,
    positive_finite=False,
    at_least=None,
    optional=False,
    in_unit=False,
    closed=False,
    open_low=False,
    at_least_zero=False,
):
    """One rule over several fields; raises CapgenError('--NAME: VALUE: must be ...')."""
    for name in names:
        value = getattr(args, name)
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise CapgenError(f"{_name(name)}: {value!r}: not a number")
        if positive_finite and not (0 < value < float("inf")):
            raise CapgenError(f"{_name(name)}: {value!r}: must be finite and > 0")
        if at_least_zero and not (0 <= value < float("inf")):
            raise CapgenError(f"{_name(name)}: {value!r}: must be finite and >= 0")
        if at_least is not None and (not float(value).is_integer() or value < at_least):
            raise CapgenError(f"{_name(name)}: {value!r}: must be an integer >= {at_least}")
        if in_unit:
            low_ok = value > 0 if open_low else value >= 0
            high_ok = value <= 1 if closed or open_low else value < 1
            if not (low_ok and high_ok):
                rng = "(0, 1]" if open_low else "[0, 1]" if closed else "[0, 1)"
                raise CapgenError(f"{_name(name)}: {value!r}: must be in {rng}")
