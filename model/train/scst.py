"""Self-critical sequence training (Rennie et al. 2017): the CIDEr-D reward, its step and epoch.

`capgen train --scst --init RUN/best` continues a cross-entropy model. Each step draws
k captions per image (model/nets/search.py's `sample`, all B x k at once, in training mode,
from torch's RNG, which the trainer seeds per epoch as it does for dropout), scores each
against the image's token-table captions with capgen's CIDEr-D (model/train/cider.py, document
frequencies from the whole training token table, computed once), and descends
    loss = -mean over samples of (reward - baseline) * sum_t log p(token_t)
(tokens up to and including <end>). baseline "mean": the mean reward of the image's other
k-1 samples (self-critical.pytorch's "new SCST"); "greedy": the reward of the image's
greedy caption. An optional penalty is taken off the reward of a caption that ends on a
function word ("a", "with", ...); the share of such captions is logged either way.

Validation of an SCST run scores CIDEr with the same code (`val_cider`): pycocoevalcap's
formula, document frequencies from the val references, on token ids of the val token
table (cleaned captions, cut to max_len words, rare words as <unk>).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.device import autocast_for
from model.infer.captioner import Captioner
from model.infer.source_check import check_source
from model.nets.caption_model import to_device
from model.nets.search import greedy, sample
from model.train.cider import Cider
from model.train.epoch import write_train
from pipeline.errors import CapgenError
from pipeline.loading.features import corrupt_input
from pipeline.text import END, PAD, UNK, TokenTable

BAD_ENDINGS = ("a", "with", "of", "the", "and", "on", "in")


def init_model(args, source, vocab, device):
    """(encoder, decoder, encoder weights name, config) of --init's checkpoint, checked against `source`."""
    if not args.init:
        raise CapgenError("--scst needs --init RUN/best (a cross-entropy checkpoint to continue)")
    if args.compile:
        raise CapgenError("--compile is not supported with --scst (sampling stops when every caption has ended)")
    captioner = Captioner.load(args.init, device)
    encoder, decoder, config = captioner.encoder, captioner.decoder, captioner.config
    if captioner.vocab.itos != vocab.itos:
        raise CapgenError(f"{args.init}: its vocabulary is not {source.path}'s (the reward compares token ids)")
    check_source(source, config, encoder, args.init)
    if source.kind == "features" and args.fine_tune_encoder:
        raise CapgenError(f"{source.path}: cached features are frozen; fine-tuning needs a shard set")
    if args.fine_tune_encoder:
        encoder.set_fine_tune()
    return encoder, decoder, config["encoder"]["weights"], dict(config)


def reward_scorer(source):
    """CIDEr-D with document frequencies from every caption of `source`'s token table."""
    table = TokenTable.load(source.tokens_path)
    refs = table.tokens.reshape(-1, table.tokens.shape[2])
    return Cider.from_refs(refs, np.repeat(np.arange(len(table)), table.per_image))


def val_cider(captions, source, vocab):
    """Corpus CIDEr of {image_id: caption words joined by spaces} against `source`'s token table."""
    ids = sorted(captions)
    refs, _ = TokenTable.load(source.tokens_path).rows(ids)
    cands = np.full((len(ids), vocab.max_len + 1), PAD, np.int64)
    for r, image_id in enumerate(ids):
        words = [vocab.stoi.get(w, UNK) for w in captions[image_id].split()][: vocab.max_len]
        cands[r, : len(words) + 1] = words + [END]
    groups = np.repeat(np.arange(len(ids)), refs.shape[1])
    flat = refs.reshape(-1, refs.shape[2])
    return float(Cider.from_refs(flat, groups).score(cands, np.arange(len(ids)), flat, groups).mean())


class ScstModel(nn.Module):
    """The caption model's sampling pass as one forward (so that DDP syncs its gradients)."""

    def __init__(self, model, samples, max_len, stop_early=None):
        super().__init__()
        self.model, self.samples, self.max_len, self.stop_early = model, samples, max_len, stop_early

    def forward(self, batch):
        feats = self.model.features(batch)
        return sample(self.model.decoder, feats, self.samples, self.max_len, stop_early=self.stop_early)


class ScstStep:
    """Call with a loader batch; returns its number of images. `take()` gives the sums since
    the last take: loss, reward, baseline, bad endings, captions, steps.

    One host sync per step, the reward's: the sampled captions (and the greedy baseline's, in
    the same copy) go to the host, where CIDEr-D is computed; the references are the loader's
    host tokens, the loss sum stays on the device until `take()` (the log interval)."""

    def __init__(self, model, forward, optimizer, device, scorer, vocab, args):
        self.model, self.forward, self.optimizer, self.device = model, forward, optimizer, device
        self.scorer, self.vocab, self.grad_clip = scorer, vocab, args.grad_clip
        self.samples, self.baseline, self.penalty = args.scst_samples, args.scst_baseline, args.scst_bad_ending_penalty
        self.source = args.train  # named when its features are not finite
        if self.baseline == "mean" and self.samples < 2:
            raise CapgenError("--scst-baseline mean needs --scst-samples 2 or more")
        self.bad_ids = np.array([vocab.stoi[w] for w in BAD_ENDINGS if w in vocab.stoi], np.int64)
        self.amp, self.image_dtype = autocast_for(device, args.bf16)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.stop_early = device.type == "cpu"  # the greedy baseline's loop (see sample's stop_early)
        self.sums = np.zeros(6)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)

    def __call__(self, batch):
        images, refs = len(batch["image_ids"]), batch["tokens"]  # refs: the host's copy
        if "features" in batch and not torch.isfinite(batch["features"]).all():  # the host's copy: no sync
            # (sampling from NaN would fail in torch.multinomial)
            raise corrupt_input(self.source)
        batch = to_device(batch, self.device, self.image_dtype)
        with self.amp:
            tokens, logp = self.forward(batch)
        sampled, greedy_tokens = self._to_host(tokens, batch)
        reward = self.rewards(sampled, refs)
        bad = bad_endings(sampled, self.bad_ids)
        reward = reward - self.penalty * bad
        if greedy_tokens is None:
            base = (reward.sum(axis=1, keepdims=True) - reward) / (reward.shape[1] - 1)
        else:
            base = np.repeat(self.rewards(greedy_tokens, refs), reward.shape[1], axis=1)
        advantage = torch.from_numpy(reward - base).float().to(self.device)
        loss = -(advantage * logp.float().sum(dim=2)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.optimizer.step()
        self.loss_sum += loss.detach().double()
        self.sums += [0.0, reward.sum(), base.sum(), bad.sum(), reward.size, 1]
        return images

    def _to_host(self, tokens, batch):
        """(sampled [B, k, L], greedy [B, 1, L'] or None) as numpy, in one copy to the host."""
        if self.baseline == "mean":
            return tokens.cpu().numpy(), None
        with torch.no_grad(), self.amp:
            feats = self.model.features(batch).detach()
            best, _ = greedy(self.model.decoder, feats, self.vocab.max_len, stop_early=self.stop_early)
        L = max(tokens.shape[2], best.shape[1])
        both = torch.cat(
            [F.pad(tokens, (0, L - tokens.shape[2]), value=PAD), F.pad(best, (0, L - best.shape[1]))[:, None]], 1
        )
        both = both.cpu().numpy()
        return both[:, :-1, : tokens.shape[2]], both[:, -1:, : best.shape[1]]

    def rewards(self, sampled, refs):
        """CIDEr-D of sampled [B, k, L] against refs [B, K, T] -> [B, k]."""
        B, k = sampled.shape[:2]
        refs = refs.cpu().numpy()
        return self.scorer.score(
            sampled.reshape(B * k, -1),
            np.repeat(np.arange(B), k),
            refs.reshape(-1, refs.shape[2]),
            np.repeat(np.arange(B), refs.shape[1]),
        ).reshape(B, k)

    def take(self):
        """The sums since the last take (one host sync: the loss sum's), then reset."""
        self.sums[0] = self.loss_sum.item()
        self.loss_sum.zero_()
        values = self.sums.tolist()
        self.sums[:] = 0
        return values


def bad_endings(sampled, bad_ids):
    """[B, k] float: 1 where the caption's last word (before <end>) is one of bad_ids."""
    words = (sampled != PAD) & (sampled != END)
    n = words.sum(axis=2)
    last = np.take_along_axis(sampled, np.maximum(n - 1, 0)[..., None], axis=2)[..., 0]
    return ((n > 0) & np.isin(last, bad_ids)).astype(np.float64)


def log_scst(log, scst_step, seen, t0, epoch, step, bar, last=False):
    """The SCST train record: averages since the last one (one host sync per log interval)."""
    loss, reward, base, bad, n, steps = scst_step.take()
    values = {
        "scst": True,
        "loss": loss / steps,
        "reward": reward / max(n, 1),
        "baseline": base / max(n, 1),
        "bad_endings": bad / max(n, 1),
    }
    return write_train(values, ("reward", "loss"), log, scst_step, seen, t0, epoch, step, bar, last)
