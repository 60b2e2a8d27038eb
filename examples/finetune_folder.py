"""Fine-tune a Vim on your own images, laid out ImageFolder-style and read with Pillow:

    my_data/train/<class name>/*.jpg      (and optionally my_data/val/<class name>/*.jpg)
    or  my_data/<class name>/*.jpg        (a stratified --val-split is held out)

    python examples/finetune_folder.py my_data --model vim_tiny \
        --checkpoint vim_t_midclstok_76p1acc.pth --epochs 10 --out runs/my_vim
    python examples/finetune_folder.py my_digits --model vim_digits      # built-in weights

The head is replaced by one with as many outputs as you have classes; everything else starts
from the checkpoint. Training: AdamW (no weight decay on norms, biases, pos_embed, cls_token,
A_log, D), warmup + cosine learning rate, horizontal flips (``--hflip``) and small random
shifts; validation accuracy after every epoch. The result is written with
``save_pretrained`` (``OUT/model.safetensors`` + ``config.json``) and ``OUT/classes.json``;
load it with ``vimc.VisionMamba.from_pretrained(OUT)``.
"""

import argparse
import json
import math
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import vimc
from vimc.data import ImageError, find_images, load_image, preprocess, random_shift


class Samples(torch.utils.data.Dataset):
    def __init__(self, items, cfg, train: bool, hflip: bool, max_shift: int):
        self.items, self.cfg = items, cfg
        self.train, self.hflip, self.max_shift = train, hflip, max_shift
        self.fill = [(0.0 - m) / s for m, s in zip(cfg["mean"], cfg["std"])]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        x = preprocess(load_image(path), self.cfg)
        if self.train:
            if self.hflip and random.random() < 0.5:
                x = x.flip(-1)
            x = random_shift(x[None], self.max_shift, self.fill)[0]
        return x, label


def split(items, val_split: float, seed: int):
    """Stratified: ``val_split`` of every class held out (at least one image per class)."""
    rng = random.Random(seed)
    by_class: dict[int, list] = {}
    for it in items:
        by_class.setdefault(it[1], []).append(it)
    train, val = [], []
    for group in by_class.values():
        rng.shuffle(group)
        k = max(1, round(len(group) * val_split)) if len(group) > 1 else 0
        val += group[:k]
        train += group[k:]
    return train, val


def param_groups(model, weight_decay: float):
    skip = set(model.no_weight_decay())
    decay, rest = [], []
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        no = p.ndim <= 1 or name in skip or leaf in ("A_log", "A_b_log", "D", "D_b")
        (rest if no else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += len(y)
    return correct / max(1, total)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Fine-tune a Vim on an ImageFolder-style folder.")
    p.add_argument("data", type=Path, help="root folder (train/ and val/, or class folders)")
    p.add_argument("--model", default="vim_digits", help="registered model name")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="weights to start from (default: the model's built-in weights)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/finetune"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--hflip", action="store_true", help="random horizontal flips")
    p.add_argument("--max-shift", type=int, default=2, help="random shift in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    try:
        if (args.data / "train").is_dir():
            train_items, classes = find_images(args.data / "train")
            if (args.data / "val").is_dir():
                val_items, val_classes = find_images(args.data / "val")
                if val_classes != classes:
                    raise ImageError(f"train classes {classes} != val classes {val_classes}")
            else:
                train_items, val_items = split(train_items, args.val_split, args.seed)
        else:
            items, classes = find_images(args.data)
            train_items, val_items = split(items, args.val_split, args.seed)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # a new head with len(classes) outputs; the rest from the checkpoint / built-in weights
    model = vimc.create_model(
        args.model,
        pretrained=args.checkpoint is None,
        checkpoint_path=args.checkpoint,
        num_classes=len(classes),
    )
    cfg = model.pretrained_cfg
    print(
        f"{model.name}: {len(classes)} classes {classes}; {len(train_items)} train / "
        f"{len(val_items)} val images at {cfg['input_size']}"
    )
    train_dl = torch.utils.data.DataLoader(
        Samples(train_items, cfg, True, args.hflip, args.max_shift),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=False,
    )
    val_dl = torch.utils.data.DataLoader(
        Samples(val_items, cfg, False, False, 0), batch_size=args.batch_size
    )

    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    total = args.epochs * len(train_dl)
    warmup = max(1, int(args.warmup_epochs * len(train_dl)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, total - warmup))))
        ),
    )
    for epoch in range(args.epochs):
        model.train()
        bar = tqdm(train_dl, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for x, y in bar:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = evaluate(model, val_dl) if val_items else float("nan")
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}, val accuracy {acc:.2%}",
            flush=True,
        )

    model.save_pretrained(args.out)
    (args.out / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    print(f"saved {args.out} (load with vimc.VisionMamba.from_pretrained({str(args.out)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
