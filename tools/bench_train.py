"""`capgen bench train`: decoder training step and beam search, ours against the common implementation."""
import torch

from model.bench_train import bench_train


def format_report(r):
    lines = [f"device: {r['device']}, {r['amp']}" + (" (quick shapes)" if r["quick"] else "")]
    for s in r["step"]:
        lines.append(
            f"train step  {s['images']} images x {s['per_image']} captions, T={s['T']}, P={s['P']}, C={s['C']}, "
            f"vocab {s['vocab']}: ours {s['ours_captions_per_s']:.0f} captions/s, baseline "
            f"{s['baseline_captions_per_s']:.0f} captions/s ({s['baseline_decode_steps']} steps), "
            f"ratio {s['ratio']:.2f}x")
        if "compiled_ratio" in s:
            lines.append(f"            ours compiled: {s['compiled_captions_per_s']:.0f} captions/s, "
                         f"ratio {s['compiled_ratio']:.2f}x")
    b = r["beam"]
    lines.append(
        f"beam search batch {b['images']}, k={b['beam']}, P={b['P']}: batched {b['ours_images_per_s']:.1f} images/s, "
        f"one at a time {b['baseline_images_per_s']:.1f} images/s, ratio {b['ratio']:.2f}x "
        f"(same best caption: {b['same_best_caption']:.0%})")
    return "\n".join(lines)


def run(quick=False, device=None, compiled=False, threads=None):
    """Measure and print; returns the figures."""
    if threads:
        torch.set_num_threads(threads)
    r = bench_train(quick=quick, device=device, compiled=compiled)
    print(format_report(r), flush=True)
    return r
