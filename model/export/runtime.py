"""Captions from an exported model folder (`capgen export`) with numpy, Pillow and onnxruntime alone.

No torch, no simplejpeg, no click: this module imports only numpy, Pillow, onnxruntime (when a
folder is loaded) and torch-free parts of capgen (pipeline/imaging/pixels.py for the
preprocessing, pipeline/text.py for the vocabulary, model/nets/hyps.py and
model/export/numpy_search.py for the search). The preprocessing, the search and the result
are the torch Captioner's (model/infer/captioner.py): `OnnxCaptioner.load(MODEL_DIR).caption(images)`
returns what `Captioner.load(CHECKPOINT).caption(images)` does.

The folder (model/export/export.py writes it): encoder.onnx, decoder_init.onnx, decoder_step.onnx,
config.json ({"format": "capgen-onnx", "version", "files", "opset", "config": the checkpoint's
config, "grid", "checkpoint"}), vocab.json and report.json (the export's check against torch).
"""

import json
import os

import numpy as np

from model.export import numpy_search
from model.nets.hyps import caption_result
from model.runs.checkpoint_config import CONFIG as CHECKPOINT_CONFIG
from model.runs.checkpoint_config import fit_mode
from model.runs.schema import Int, List, Obj, check
from pipeline.errors import CapgenError, first_line, read_bytes
from pipeline.imaging.pixels import image_input
from pipeline.text import Vocabulary

FORMAT, VERSION = "capgen-onnx", 1
DEFAULT_OPSET = 17  # what `capgen export` writes unless told (onnxruntime 1.16 and later run it)
# graph -> (file, input names, output names); the runtime feeds by name and reads outputs in order.
GRAPHS = {
    "encoder": ("encoder.onnx", ["images"], ["features"]),
    "decoder_init": ("decoder_init.onnx", ["features"], ["standardised", "proj", "h0", "c0"]),
    "decoder_step": ("decoder_step.onnx", ["features", "proj", "prev", "h", "c"], ["logp", "alpha", "h1", "c1"]),
}
CONFIG, VOCAB, REPORT = "config.json", "vocab.json", "report.json"
EXPORT_CONFIG = Obj({"config": CHECKPOINT_CONFIG, "grid": List(Int(low=1), length=2)})  # what load reads of config.json


def read_config(model_dir):
    """MODEL_DIR/config.json, checked to be an export of this format; a one-line error otherwise."""
    path = os.path.join(os.fspath(model_dir), CONFIG)
    if not os.path.isdir(model_dir):
        raise CapgenError(f"{model_dir}: no such folder (make one with capgen export)")
    if not os.path.isfile(path):
        raise CapgenError(f"{path}: not found: {model_dir} is not a capgen export folder")
    try:
        config = json.loads(read_bytes(path))
    except ValueError as err:  # JSON or UTF-8
        raise CapgenError(f"{path}: not JSON ({first_line(err)})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CapgenError(f"{path}: not a capgen export (format is not {FORMAT!r})")
    if config.get("version") != VERSION:
        raise CapgenError(f"{path}: export version {config.get('version')!r}; this capgen reads version {VERSION}")
    return check(path, config, EXPORT_CONFIG)


def session_options(threads=None, spin=None):
    """onnxruntime.SessionOptions: `threads` intra-op threads (None: one per core), one inter-op;
    its threads spin while idle unless spin=False (default: not when OMP_WAIT_POLICY is PASSIVE,
    as torch's OpenMP threads do not)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if spin is None:
        spin = os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


class OnnxCaptioner:
    """The three graphs of MODEL_DIR in onnxruntime sessions, its vocabulary and config:
    Captioner's interface (caption, preprocess, image, grid, vocab, config) without torch."""

    def __init__(self, sessions, vocab, config, grid):
        self.sessions, self.vocab, self.config = sessions, vocab, config
        self.image, self.grid = config["image"], list(grid)
        self.device = "onnxruntime"

    @classmethod
    def load(cls, model_dir, threads=None, providers=None, spin=None) -> "OnnxCaptioner":
        """MODEL_DIR (from `capgen export`) -> OnnxCaptioner; threads: onnxruntime's intra-op threads
        (None: one per core); providers: onnxruntime's (default CPUExecutionProvider)."""
        exported = read_config(model_dir)
        try:
            import onnxruntime as ort
        except ImportError:
            raise CapgenError(f"{model_dir}: onnxruntime is not installed (pip install onnxruntime)") from None
        opts = session_options(threads, spin)
        sessions = {}
        for name, (file, _, _) in GRAPHS.items():
            path = os.path.join(os.fspath(model_dir), file)
            try:
                sessions[name] = ort.InferenceSession(path, opts, providers=providers or ["CPUExecutionProvider"])
            except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for missing and bad files
                raise CapgenError(f"{path}: cannot load ({first_line(err)})") from None
        try:
            config = exported["config"]
            fit_mode(config["image"]["resize_mode"])
            grid = exported["grid"]
        except (KeyError, TypeError, ValueError) as err:
            raise CapgenError(f"{model_dir}/{CONFIG}: incomplete ({first_line(err)})") from None
        vocab = Vocabulary.load(os.path.join(os.fspath(model_dir), VOCAB))
        return cls(sessions, vocab, config, grid)

    def preprocess(self, img) -> np.ndarray:
        """PIL image or image file -> float32 [3, size, size], exactly as the torch Captioner
        preprocesses it (pipeline/imaging/pixels.py's image_input)."""
        size, mode = self.image["size"], fit_mode(self.image["resize_mode"])
        return image_input(img, size, mode, self.image["mean"], self.image["std"])

    def run(self, graph, *inputs):
        """One graph on numpy inputs (in GRAPHS order) -> its outputs, in order."""
        _, names, _ = GRAPHS[graph]
        return self.sessions[graph].run(None, dict(zip(names, inputs)))

    def context(self, x):
        """Preprocessed images x [B, 3, size, size] -> (standardised features, proj, h0, c0)."""
        (features,) = self.run("encoder", np.ascontiguousarray(x, dtype=np.float32))
        return self.run("decoder_init", features)

    def caption(self, images, beam=3, topk=3, length_norm=False, batch_size=16) -> list:
        """PIL images -> [{"captions": [{"text", "score"}], "words", "attention", "grid"}], one per
        image, as Captioner.caption: batched beam search (beam=1: greedy), `topk` captions each."""
        out = []
        for i in range(0, len(images), batch_size):
            x = np.stack([self.preprocess(img) for img in images[i : i + batch_size]])
            out += self.caption_arrays(x, beam=beam, topk=topk, length_norm=length_norm)
        return out

    def caption_arrays(self, x, beam=3, topk=3, length_norm=False) -> list:
        """caption() of preprocessed images x [B, 3, size, size] (from .preprocess), as one batch."""
        features, proj, h0, c0 = self.context(x)

        def step(prev, h, c):
            return self.run("decoder_step", features, proj, prev, h, c)

        hyps = numpy_search.beam_search(step, h0, c0, beam, self.vocab.max_len, topk, length_norm)
        return [caption_result(self.vocab, h, self.grid) for h in hyps]

    def greedy(self, x):
        """Preprocessed images x -> tokens [B, L], alphas [B, L, P], as model/nets/search.py's greedy."""
        features, proj, h0, c0 = self.context(x)
        return numpy_search.greedy(
            lambda prev, h, c: self.run("decoder_step", features, proj, prev, h, c), h0, c0, self.vocab.max_len
        )
