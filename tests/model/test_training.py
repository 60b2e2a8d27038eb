"""Training: gradients reach every parameter, and a tiny Vim learns a small real task
(scikit-learn's 8x8 handwritten digits, upscaled to 16x16)."""

import pytest
import torch
import torch.nn.functional as F

import vimc


def test_backward_reaches_every_parameter(small_model):
    m = small_model(drop_path_rate=0.1).train()
    x = torch.randn(3, 3, 32, 32)
    F.cross_entropy(m(x), torch.tensor([1, 2, 3])).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient"


def test_backward_bfloat16_autocast(small_model):
    m = small_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(m(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert m.layers[0].mixer.A_log.grad.dtype == torch.float32


@pytest.mark.slow
def test_loss_falls_on_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:1500], perm[1500:]
    torch.manual_seed(0)
    m = vimc.create_model(
        "vim_tiny",
        depth=2,
        embed_dim=48,
        img_size=16,
        patch_size=4,
        stride=4,
        in_chans=1,
        num_classes=10,
    )
    opt = torch.optim.AdamW(m.parameters(), lr=4e-3, weight_decay=0.01)

    def evaluate():
        m.eval()
        with torch.no_grad():
            logits = m(x[test])
        m.train()
        return F.cross_entropy(logits, y[test]).item(), (logits.argmax(1) == y[test]).float().mean()

    loss0, _ = evaluate()
    order = train[torch.randperm(len(train), generator=g)]
    for i in range(0, len(order), 64):  # one epoch, 24 steps
        idx = order[i : i + 64]
        loss = F.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss1, acc = evaluate()
    assert loss1 < 0.5 * loss0, (loss0, loss1)
    assert acc > 0.75, f"held-out accuracy {acc:.2f}"
