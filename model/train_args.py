"""TrainArgs: every training setting and the one place its default is written.

Fields made with `option()` are also `capgen train`'s options, in this order:
tools/cli.py turns each into --NAME (underscores as dashes) with this default and
help. The others (gradient clipping, LR schedule, ...) are for code callers only.
Kept free of torch so that the command line can read it at import time.
"""
from dataclasses import MISSING, dataclass, field

ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101")


def option(default=MISSING, help=None, choices=None, folder=False):
    """A TrainArgs field that `capgen train` offers; choices: the allowed values;
    folder: the value names a folder (the command line refuses a file)."""
    return field(default=default, metadata={"cli": {"help": help, "choices": choices, "folder": folder}})


@dataclass
class TrainArgs:
    train: str = option(help="Shard set folder or feature cache .h5.")
    val: str = option(help="Shard set folder or feature cache .h5.")
    out: str = option(help="Run folder (last/, best/, log.jsonl).", folder=True)
    epochs: int = option(20)
    batch_size: int = option(32, "Images per step (each with its captions).")
    encoder: str | None = option(None, "Default resnet50 (for a feature cache: the cache's).", ENCODERS)
    encoder_stop: str | None = option(None, "Default layer4.", ("layer2", "layer3", "layer4"))
    encoder_weights: str | None = option(None, "imagenet (default), none, or a weights file.")
    fine_tune_encoder: bool = option(False, "Train layers 3-4 of the encoder too (shard sets only).")
    download: bool = option(False, "Allow fetching torchvision's ImageNet weights when they are not in "
                                   "the local cache.")
    embed_dim: int = option(512)
    attention_dim: int = option(512)
    hidden_dim: int = option(512)
    dropout: float = option(0.5)
    decoder_lr: float = option(4e-4)
    encoder_lr: float = option(1e-4)
    grad_clip: float = 5.0
    alpha_c: float = 1.0             # weight of the doubly stochastic attention term
    lr_factor: float = 0.8           # ReduceLROnPlateau on val BLEU-4
    lr_patience: int = 3
    patience: int = option(20, "Early stopping: epochs without a better val BLEU-4.")
    beam: int = option(1, "Validation decoding (1: greedy).")
    val_images: int | None = option(None, "Validate on the first N val images only.")
    resume: bool = option(False, "Continue from OUT/last exactly.")
    compile: bool = option(False, "torch.compile the training step.")
    workers: int = option(2, "Loader processes per rank.")
    loader: str = option("auto", "auto: DALI on a GPU, else the CPU webdataset loader; dali without a GPU "
                                 "runs DALI's CPU graph.", ("auto", "cpu", "dali"))
    seed: int = option(0)
    log_every: int = option(50, "Steps between log records.")
    device: str | None = option(None, "cuda, cpu, ... (default: cuda when present).")
    progress: bool = True
    feature_samples: int = 512       # images used to estimate channel stats (image sources)
