"""Train vimc's built-in model, ``vim_digits``, on scikit-learn's handwritten digits.

A real training loop to adapt: AdamW with weight decay on matrices only, linear warmup then
cosine decay (per step), label smoothing, random-shift augmentation, evaluation on the held-out
split after every epoch, a checkpoint after every epoch (``last.pt``) and ``--resume``.

Data: ``sklearn.datasets.load_digits`` (1,797 real 8x8 scans), split once and for all with
``train_test_split(test_size=0.2, stratify=labels, random_state=0)`` -> 1,437 train / 360
held out (see vimc/data.py). Each 8x8 digit is upscaled to 32x32 by the same Pillow
preprocessing ``vimc predict`` uses (bicubic), then split into 4x4 patches: 64 tokens + 1 class
token. The held-out split is never trained on; the shipped weights are the last epoch's (not
picked by held-out accuracy).

    pip install 'vimc[train]'                 # scikit-learn
    python examples/train_digits.py           # -> runs/vim_digits/{last.pt, model/}
    python examples/train_digits.py --resume  # continue from runs/vim_digits/last.pt
    python examples/train_digits.py --export-weights vimc/weights/vim_digits.safetensors

Load the result with ``vimc.VisionMamba.from_pretrained("runs/vim_digits/model")``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import vimc
from vimc import data

# the architecture of the shipped vim_digits, as registered in vimc/model.py
DIGITS_ARCH = vimc.model.get_variant("vim_digits").config


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/vim_digits"),
        help="output folder: last.pt (checkpoint), model/ (save_pretrained), log.jsonl",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end")
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument(
        "--max-shift",
        type=int,
        default=3,
        help="random translation in pixels of the 32x32 input (0: none)",
    )
    p.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate")
    p.add_argument("--embed-dim", type=int, default=DIGITS_ARCH.embed_dim)
    p.add_argument("--depth", type=int, default=DIGITS_ARCH.depth)
    p.add_argument("--d-state", type=int, default=DIGITS_ARCH.d_state)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="continue from a checkpoint (default: OUT/last.pt)",
    )
    p.add_argument(
        "--limit-train",
        type=int,
        default=0,
        help="use only the first N training images (smoke tests)",
    )
    p.add_argument(
        "--export-weights",
        type=Path,
        default=None,
        metavar="FILE.safetensors",
        help="also write the final model as one safetensors file (what ships in vimc/weights/)",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs only)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # numpy draws no random numbers here


def build_model(args) -> vimc.VisionMamba:
    return vimc.create_model(
        "vim_digits",
        embed_dim=args.embed_dim,
        depth=args.depth,
        d_state=args.d_state,
        drop_path_rate=args.drop_path,
    )


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: not on biases, norms, pos_embed, cls_token, or the
    SSM parameters A_log and D (Mamba's convention)."""
    skip = set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim <= 1 or name in skip or leaf in ("A_log", "A_b_log", "D", "D_b"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup: int, total: int, peak: float, floor: float) -> float:
    """Learning rate at ``step``: linear 0 -> peak over ``warmup`` steps, cosine to ``floor``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict:
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        loss += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").item()
        correct += (logits.argmax(-1) == y[i : i + batch_size]).sum().item()
    return {"acc": correct / len(x), "loss": loss / len(x)}


def save_checkpoint(
    path: Path, model, opt, epoch: int, step: int, history: list, args, gen: torch.Generator
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch,
            "step": step,
            "history": history,
            "rng": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        },
        tmp,
    )
    tmp.replace(path)  # never leave a half-written last.pt behind


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    try:
        x_tr, y_tr, x_te, y_te = data.load_digits_split()
    except data.MissingDependencyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit_train:
        x_tr, y_tr = x_tr[: args.limit_train], y_tr[: args.limit_train]

    model = build_model(args)
    cfg = model.pretrained_cfg
    xtr = data.digits_to_tensor(x_tr, cfg)
    xte = data.digits_to_tensor(x_te, cfg)
    ytr, yte = torch.from_numpy(y_tr), torch.from_numpy(y_te)
    background = [(0.0 - m) / s for m, s in zip(cfg["mean"], cfg["std"])]  # blank paper
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"vim_digits: {n_params:,} parameters, {model.config.embed_dim} wide, "
        f"{model.config.depth} layers, {model.patch_embed.num_patches} tokens; "
        f"train {len(xtr)} / held-out {len(xte)} images; torch threads "
        f"{torch.get_num_threads()}"
    )

    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = int(args.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(args.seed)
    start_epoch, step, history = 0, 0, []
    args.out.mkdir(parents=True, exist_ok=True)
    last = args.out / "last.pt"

    if args.resume:
        ckpt_path = last if args.resume == "auto" else Path(args.resume)
        if not ckpt_path.exists():
            print(f"error: no checkpoint to resume from at {ckpt_path}", file=sys.stderr)
            return 2
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, step, history = ckpt["epoch"] + 1, ckpt["step"], ckpt["history"]
        gen.set_state(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        print(
            f"resumed from {ckpt_path} after epoch {ckpt['epoch'] + 1} "
            f"(held-out acc {history[-1]['test_acc']:.2%})"
            if history
            else ""
        )

    t_start = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xtr), generator=gen)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{args.epochs}",
            disable=args.no_progress,
            leave=False,
            dynamic_ncols=True,
        )
        seen, loss_sum, correct = 0, 0.0, 0
        for i in bar:
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            xb = data.random_shift(xtr[idx], args.max_shift, background, generator=gen)
            yb = ytr[idx]
            lr = warmup_cosine(step, warmup_steps, total_steps, args.lr, args.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(-1) == yb).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.2e}")
        train_time = time.perf_counter() - t0
        ev = evaluate(model, xte, yte)
        rec = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_loss": ev["loss"],
            "test_acc": ev["acc"],
            "lr": lr,
            "epoch_seconds": round(time.perf_counter() - t0, 2),
            "train_seconds": round(train_time, 2),
        }
        history.append(rec)
        print(
            f"epoch {epoch + 1:3d}/{args.epochs}  train loss {rec['train_loss']:.4f} "
            f"acc {rec['train_acc']:.2%}  held-out loss {ev['loss']:.4f} acc {ev['acc']:.2%}  "
            f"({rec['epoch_seconds']:.1f}s)",
            flush=True,
        )
        with open(args.out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        save_checkpoint(last, model, opt, epoch, step, history, args, gen)

    elapsed = time.perf_counter() - t_start
    model.eval()
    model.save_pretrained(args.out / "model")
    final = evaluate(model, xte, yte)
    total_train = sum(r["epoch_seconds"] for r in history)
    print(
        f"done: held-out accuracy {final['acc']:.2%} ({round(final['acc'] * len(xte))}/"
        f"{len(xte)}); this run {elapsed:.0f}s, all epochs {total_train:.0f}s; "
        f"model in {args.out / 'model'}"
    )
    if args.export_weights:
        args.export_weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.out / "model" / "model.safetensors", args.export_weights)
        print(f"wrote {args.export_weights} ({args.export_weights.stat().st_size / 1e3:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
