"""`capgen bench train`: decoder training step and beam search, ours against the common implementation.

The baseline is a line-for-line port of sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning
(DecoderWithAttention.forward, Attention.forward, the train() loss) run on a copy
of the same weights, so both compute the same loss:
- image features repeated per caption: encoder output [B*K, P, C], as its
  dataset yields one (image, caption) pair per sample;
- encoder_att(features) recomputed inside every time step;
- captions sorted by length, the batch shrinking to batch_size_t each step,
  pack_padded_sequence for the loss.
Ours: the trainer's decoder call (model/nets/decoder.py's train_plan + Decoder.train_loss,
as model/train/step.py's TrainStep runs it): features [B, P, C] projected once per
batch, the K captions as a group axis, the images sorted by their longest
caption and the captions of each by length, each step running only the images
still captioning (rounded up to a multiple of 8) and their most captions still
going, the output layer and loss only on the valid predictions. Caption lengths
are drawn like COCO's (about 10.5 words on average, most between 8 and 16).
Row-steps: the decoder steps per caption, on average (ours: the rows its image
group runs, sum of n_t * g_t over the batch's captions; the baseline: its own length).
Same shapes, decoder sizes, optimizer (Adam), learning rate and clipping threshold (TrainArgs'; gradients clipped by
value as there), precision and device, measured in the same run:
iterations interleaved (ours, baseline, ours, ...), each side's best one kept,
so a busy machine slows both alike.

Beam search: one batched call over B images against a loop over the same
images one at a time (the same beam search with B=1, as the common
single-image caption_image_beam_search is used).
"""

import copy

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from model.device import default_device
from model.nets.decoder import Decoder, train_plan
from model.nets.search import beam_search
from model.train.args import TrainArgs
from tools.bench.step.kinds import synthetic_batch
from tools.bench.step.measure import COCO_TRAIN_IMAGES, COMPILE_BATCHES, GPU_BATCH, measure
from tools.bench.step.measure import format_report as gpu_step_report
from tools.bench.timing import best_of

TRAINER_DIMS = (TrainArgs.embed_dim, TrainArgs.attention_dim, TrainArgs.hidden_dim)
FULL = {
    "images": 32,
    "per_image": 5,
    "T": 22,
    "C": 2048,
    "vocab": 10000,
    "dims": TRAINER_DIMS,
    "grids": (64, 196),
    "beam_images": 64,
    "beam": 3,
    "iters": 3,
    "warmup": 1,
    "gpu_batch": GPU_BATCH,
    "gpu_epoch_images": COCO_TRAIN_IMAGES,
    "gpu_compile_batches": COMPILE_BATCHES,
}
QUICK = {
    "images": 4,
    "per_image": 5,
    "T": 22,
    "C": 64,
    "vocab": 300,
    "dims": (32, 32, 32),
    "grids": (16,),
    "beam_images": 6,
    "beam": 3,
    "iters": 1,
    "warmup": 1,
    "gpu_batch": 16,
    "gpu_epoch_images": 160,
    "gpu_compile_batches": 4,
}


def baseline_attention(att, encoder_out, decoder_hidden):
    att1 = att.feature_att(encoder_out)  # (batch_size, num_pixels, attention_dim), every step
    att2 = att.hidden_att(decoder_hidden)
    e = att.full_att(torch.relu(att1 + att2.unsqueeze(1))).squeeze(2)
    alpha = torch.softmax(e, dim=1)
    attention_weighted_encoding = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)
    return attention_weighted_encoding, alpha


def baseline_forward(dec, encoder_out, encoded_captions, caption_lengths):
    """DecoderWithAttention.forward on dec's weights; encoder_out [N, P, C], one row per caption."""
    batch_size, num_pixels = encoder_out.size(0), encoder_out.size(1)
    caption_lengths, sort_ind = caption_lengths.squeeze(1).sort(dim=0, descending=True)
    encoder_out = encoder_out[sort_ind]
    encoded_captions = encoded_captions[sort_ind]
    embeddings = dec.embedding(encoded_captions)
    mean_encoder_out = encoder_out.mean(dim=1)
    h, c = dec.init_h(mean_encoder_out), dec.init_c(mean_encoder_out)
    decode_lengths = (caption_lengths - 1).tolist()
    predictions = torch.zeros(batch_size, max(decode_lengths), dec.vocab_size, device=encoder_out.device)
    alphas = torch.zeros(batch_size, max(decode_lengths), num_pixels, device=encoder_out.device)
    for t in range(max(decode_lengths)):
        batch_size_t = sum([n > t for n in decode_lengths])
        awe, alpha = baseline_attention(dec.attention, encoder_out[:batch_size_t], h[:batch_size_t])
        gate = torch.sigmoid(dec.f_beta(h[:batch_size_t]))
        awe = gate * awe
        h, c = dec.lstm(torch.cat([embeddings[:batch_size_t, t, :], awe], dim=1), (h[:batch_size_t], c[:batch_size_t]))
        preds = dec.fc(dec.dropout(h))
        predictions[:batch_size_t, t, :] = preds
        alphas[:batch_size_t, t, :] = alpha
    return predictions, encoded_captions, decode_lengths, alphas, sort_ind


def baseline_loss(dec, encoder_out, caps, caplens, alpha_c=1.0):
    scores, caps_sorted, decode_lengths, alphas, _ = baseline_forward(dec, encoder_out, caps, caplens)
    targets = caps_sorted[:, 1:]
    scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
    return F.cross_entropy(scores, targets) + alpha_c * ((1.0 - alphas.sum(dim=1)) ** 2).mean()


def _train_step(dec, loss_fn, amp, device, compiled=False):
    opt = torch.optim.Adam(dec.parameters(), lr=TrainArgs.decoder_lr, fused=device.type == "cuda")

    def step():
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(dec.parameters(), TrainArgs.grad_clip)
        opt.step()

    return step


def bench_step(P, cfg, device, amp, compiled=False):
    """Training steps (forward + backward + Adam) per second for ours and the baseline;
    compiled=True also times ours under torch.compile (CUDA graphs on a GPU)."""
    B, K, T, C, V = cfg["images"], cfg["per_image"], cfg["T"], cfg["C"], cfg["vocab"]
    torch.manual_seed(0)
    ours = Decoder(V, C, *cfg["dims"], TrainArgs.dropout).to(device).train()
    base = copy.deepcopy(ours)
    features, tokens, lengths = synthetic_batch(B, K, T, P, C, V, device)
    # The baseline's input as its pipeline makes it: one feature copy per caption.
    features_rep = features.repeat_interleave(K, dim=0)
    caps, caplens = tokens.view(B * K, T), lengths.view(B * K, 1)

    host_lengths = lengths.cpu()  # as the CPU loaders hand them to TrainStep

    def ours_loss():
        plan = train_plan(host_lengths).to(device)  # per batch, as TrainStep does, outside the compiled forward
        return ours.train_loss(features, tokens, plan, TrainArgs.alpha_c)[0]

    def base_loss():
        return baseline_loss(base, features_rep, caps, caplens, TrainArgs.alpha_c)

    steps = [_train_step(ours, ours_loss, amp, device), _train_step(base, base_loss, amp, device)]
    warmup = [cfg["warmup"]] * 2
    if compiled:
        mode = "reduce-overhead" if device.type == "cuda" else None
        steps.append(_train_step(ours, torch.compile(ours_loss, mode=mode), amp, device, compiled=True))
        warmup.append(cfg["warmup"] + 2)  # compile, then CUDA graph capture
    widths = train_plan(host_lengths).widths
    t_ours, t_base, *t_compiled = best_of(steps, cfg["iters"], warmup, device)
    out = {
        "P": P,
        "C": C,
        "images": B,
        "per_image": K,
        "T": T,
        "vocab": V,
        "baseline_decode_steps": int(lengths.max()) - 1,
        "ours_decode_steps": len(widths),
        "baseline_row_steps": float((lengths - 1).float().mean()),
        "ours_row_steps": sum(n * g for n, g in widths) / (B * K),
        "ours_captions_per_s": B * K / t_ours,
        "baseline_captions_per_s": B * K / t_base,
        "ratio": t_base / t_ours,
    }
    if compiled:
        out.update(compiled_captions_per_s=B * K / t_compiled[0], compiled_ratio=t_base / t_compiled[0])
    return out


def bench_beam(P, cfg, device, amp):
    """Images per second: one batched beam search against one image at a time."""
    B, C, V, k = cfg["beam_images"], cfg["C"], cfg["vocab"], cfg["beam"]
    torch.manual_seed(0)
    dec = Decoder(V, C, *cfg["dims"], TrainArgs.dropout).to(device).eval()
    features = synthetic_batch(B, 1, cfg["T"], P, C, V, device)[0]
    max_len = cfg["T"] - 2
    out = {}

    def batched():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out["batched"] = beam_search(dec, features, beam=k, max_len=max_len)

    def one_by_one():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out["single"] = [beam_search(dec, features[i : i + 1], beam=k, max_len=max_len)[0] for i in range(B)]

    t_batched, t_single = best_of([batched, one_by_one], cfg["iters"], cfg["warmup"], device)
    same = sum(a[0].tokens == b[0].tokens for a, b in zip(out["batched"], out["single"]))
    return {
        "P": P,
        "images": B,
        "beam": k,
        "ours_images_per_s": B / t_batched,
        "baseline_images_per_s": B / t_single,
        "ratio": t_single / t_batched,
        "same_best_caption": same / B,
    }


def device_name(device):
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n > 1 else ''})"


def bench_train(quick=False, device=None, amp=None, compiled=False):
    """All figures as a dict: {"device", "amp", "compiled", "step": [per grid], "beam": {...},
    "gpu_step": {...}} (the last measured on the CPU: tools/bench/step/measure.py).

    amp (default: on a GPU) runs both sides under bf16 autocast; Adam is fused on a GPU for both."""
    cfg = QUICK if quick else FULL
    device = default_device(device)
    amp = device.type == "cuda" if amp is None else amp
    return {
        "device": device_name(device),
        "amp": "bf16" if amp else "fp32",
        "quick": quick,
        "compiled": compiled,
        "step": [bench_step(P, cfg, device, amp, compiled) for P in cfg["grids"]],
        "beam": bench_beam(cfg["grids"][0], cfg, device, amp),
        "gpu_step": measure(compiled, cfg["gpu_batch"], cfg["gpu_epoch_images"], cfg["gpu_compile_batches"]),
    }


def format_report(r):
    lines = [f"device: {r['device']}, {r['amp']}" + (" (quick shapes)" if r["quick"] else "")]
    for s in r["step"]:
        lines.append(
            f"train step  {s['images']} images x {s['per_image']} captions, T={s['T']}, P={s['P']}, C={s['C']}, "
            f"vocab {s['vocab']}: ours {s['ours_captions_per_s']:.0f} captions/s, baseline "
            f"{s['baseline_captions_per_s']:.0f} captions/s (steps {s['ours_decode_steps']} / "
            f"{s['baseline_decode_steps']}, row-steps per caption {s['ours_row_steps']:.1f} / "
            f"{s['baseline_row_steps']:.1f}, both shrinking), "
            f"ratio {s['ratio']:.2f}x"
        )
        if "compiled_ratio" in s:
            lines.append(
                f"            ours compiled: {s['compiled_captions_per_s']:.0f} captions/s, "
                f"ratio {s['compiled_ratio']:.2f}x"
            )
    b = r["beam"]
    lines.append(
        f"beam search batch {b['images']}, k={b['beam']}, P={b['P']}: batched {b['ours_images_per_s']:.1f} images/s, "
        f"one at a time {b['baseline_images_per_s']:.1f} images/s, ratio {b['ratio']:.2f}x "
        f"(same best caption: {b['same_best_caption']:.0%})"
    )
    lines.append(gpu_step_report(r["gpu_step"]))
    return "\n".join(lines)


def summary(r):
    """The figures `--json` prints: captions/s per grid for the step, images/s for beam search."""
    b = r["beam"]
    return {
        "step": [
            {
                "P": s["P"],
                "ours": s["ours_captions_per_s"],
                "baseline": s["baseline_captions_per_s"],
                "ratio": s["ratio"],
            }
            for s in r["step"]
        ],
        "beam": {
            "batch": b["images"],
            "ours": b["ours_images_per_s"],
            "baseline": b["baseline_images_per_s"],
            "ratio": b["ratio"],
        },
        "gpu_step": r["gpu_step"],
    }


def run(quick=False, device=None, compiled=False, threads=None):
    """Measure and print; returns the figures."""
    if threads:
        torch.set_num_threads(threads)
    r = bench_train(quick=quick, device=device, compiled=compiled)
    print(format_report(r), flush=True)
    return r
