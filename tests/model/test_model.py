"""The model: variants and parameter counts (vim.md), timm's contract, the factory, input-size
handling, dtypes, initialization, and the forward pass against vim.md written out literally."""

import math

import pytest
import torch
import torch.nn.functional as F
from vimc.ops import selective_scan_reference

import vimc
from vimc.model import VimConfig, get_variant, register_variant

from ..tolerances import (
    AUTOCAST_BF16_VS_FLOAT32,
    DT_INIT_RANGE_REL,
    DYNAMIC_VS_FIXED_IMG_SIZE,
    EXACT,
    HALF_MODEL_VS_FLOAT32,
    INIT_STD_LECUN_NORMAL,
    INIT_STD_TRUNC_NORMAL,
    MODEL_VS_VIM_MD,
)
from ._helpers import SMALL, randomize_

# vim.md's table: (short name, official name, D, stride, params as stated)
VARIANTS = [
    (
        "vim_tiny",
        "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
        192,
        16,
        "7.15M",
    ),
    (
        "vim_tiny_s8",
        "vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
        192,
        8,
        "7.25M",
    ),
    (
        "vim_small",
        "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
        384,
        16,
        "25.8M",
    ),
    (
        "vim_small_s8",
        "vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
        384,
        8,
        "26M",
    ),
    (
        "vim_base",
        "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
        768,
        16,
        "97.6M",
    ),
]


@pytest.mark.parametrize("short,long,D,stride,stated", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_variant_param_count_and_alias(short, long, D, stride, stated):
    m = vimc.create_model(long, device="meta")  # the official name is an alias
    assert m.name == short and m.embed_dim == D and m.patch_embed.stride == stride
    assert len(m.layers) == 24
    n = sum(p.numel() for p in m.parameters()) / 1e6
    decimals = len(stated[:-1].split(".")[1]) if "." in stated else 0
    assert round(n, decimals) == float(stated[:-1]), f"{short}: {n:.4f}M vs stated {stated}"


def test_list_models():
    # other test modules may register variants of their own (tests/export registers one), so
    # the registry is checked for what vimc ships rather than for equality
    names = vimc.list_models()
    assert names == sorted(names)
    assert set(names) >= {v[0] for v in VARIANTS} | {"vim_digits"}
    assert set(vimc.list_models(include_aliases=True)) >= {v[1] for v in VARIANTS}
    assert vimc.list_models("vim_tiny*") == ["vim_tiny", "vim_tiny_s8"]
    # vim_digits has weights in the package, the official variants on the Hub
    assert vimc.list_models(pretrained=True) == sorted(["vim_digits", *(v[0] for v in VARIANTS)])


def test_vim_tiny_state_dict_names_and_shapes():
    sd = vimc.create_model("vim_tiny", device="meta").state_dict()
    assert len(sd) == 415 and not list(vimc.create_model("vim_tiny", device="meta").buffers())
    top = {
        "cls_token": (1, 1, 192),
        "pos_embed": (1, 197, 192),
        "patch_embed.proj.weight": (192, 3, 16, 16),
        "patch_embed.proj.bias": (192,),
        "norm_f.weight": (192,),
        "head.weight": (1000, 192),
        "head.bias": (1000,),
    }
    layer = {
        "norm.weight": (192,),
        "mixer.in_proj.weight": (768, 192),
        "mixer.out_proj.weight": (192, 384),
    }
    for sfx in ("", "_b"):
        layer.update(
            {
                f"mixer.conv1d{sfx}.weight": (384, 1, 4),
                f"mixer.conv1d{sfx}.bias": (384,),
                f"mixer.x_proj{sfx}.weight": (44, 384),
                f"mixer.dt_proj{sfx}.weight": (384, 12),
                f"mixer.dt_proj{sfx}.bias": (384,),
                f"mixer.D{sfx}": (384,),
            }
        )
    layer["mixer.A_log"] = layer["mixer.A_b_log"] = (384, 16)
    expected = dict(top)
    for i in range(24):
        expected.update({f"layers.{i}.{k}": v for k, v in layer.items()})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


@pytest.mark.parametrize("name", [v[0] for v in VARIANTS])
def test_timm_contract(name):
    """num_classes, num_features, pre_logits width, reset_classifier, at each variant's width
    (depth 2 and 64x64 inputs to keep it cheap)."""
    m = vimc.create_model(name, depth=2, img_size=64, num_classes=7).eval()
    D = get_variant(name).config.embed_dim
    x = torch.randn(2, 3, 64, 64)
    assert m.num_classes == 7 and m.num_features == D
    assert m.pretrained_cfg["input_size"] == (3, 64, 64)
    assert m.pretrained_cfg["crop_pct"] == 0.875
    assert m.pretrained_cfg["interpolation"] == "bicubic"
    assert m.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    assert m.pretrained_cfg["std"] == (0.229, 0.224, 0.225)
    with torch.no_grad():
        feats = m.forward_features(x)
        grid = m.patch_embed.grid_size
        assert feats.shape == (2, grid[0] * grid[1] + 1, D)
        assert m.forward_head(feats, pre_logits=True).shape == (2, D)
        assert m(x).shape == (2, 7)
        assert m.get_classifier() is m.head
        m.reset_classifier(0)
        assert m.num_classes == 0 and isinstance(m.get_classifier(), torch.nn.Identity)
        assert m(x).shape == (2, D)
        m.reset_classifier(3)
        assert m(x).shape == (2, 3) and m.pretrained_cfg["num_classes"] == 3


def test_overrides_and_errors():
    m = vimc.create_model(
        "vim_small",
        depth=2,
        embed_dim=48,
        d_state=8,
        img_size=48,
        patch_size=8,
        stride=4,
        num_classes=5,
        drop_path_rate=0.1,
        dtype=torch.float64,
    )
    assert m.layers[0].mixer.A_log.shape == (96, 8) and m.pos_embed.shape == (1, 11 * 11 + 1, 48)
    assert m.head.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="unknown model"):
        vimc.create_model("vim_huge")
    with pytest.raises(TypeError, match="unknown argument"):
        vimc.create_model("vim_tiny", embed_dims=3)
    with pytest.raises(ValueError, match="scan_impl"):
        vimc.create_model("vim_tiny", depth=1, scan_impl="triton-ish")


def test_pretrained_without_any_weights_is_a_clear_error():
    from vimc import model as M

    M.register_variant("vim_test_noweights", M.VimConfig(depth=1, embed_dim=32))
    try:
        with pytest.raises(ValueError, match=r"no published weights.*checkpoint_path="):
            vimc.create_model("vim_test_noweights", pretrained=True)
        assert "vim_test_noweights" not in vimc.list_models(pretrained=True)
    finally:
        del M._VARIANTS["vim_test_noweights"], M._ALIASES["vim_test_noweights"]


def test_register_variant_with_packaged_weights(tmp_path, small_model):
    """A variant with shipped weights is one register_variant line; pretrained=True loads it."""
    from vimc import model as M

    src = randomize_(small_model(in_chans=1)).eval()
    src.save_pretrained(tmp_path / "w")
    saved = (dict(M._VARIANTS), dict(M._ALIASES))
    try:
        register_variant(
            "vim_test_digits", VimConfig(**{**SMALL, "in_chans": 1}), weights=str(tmp_path / "w")
        )
        assert "vim_test_digits" in vimc.list_models(pretrained=True)
        m = vimc.create_model("vim_test_digits", pretrained=True).eval()
        x = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(m(x), src(x), **EXACT)
        with pytest.raises(ValueError, match="already registered"):
            register_variant("vim_other", VimConfig(), aliases=("vim_test_digits",))
    finally:
        M._VARIANTS.clear(), M._VARIANTS.update(saved[0])
        M._ALIASES.clear(), M._ALIASES.update(saved[1])


def test_wrong_input_size_names_expected_and_got(small_model):
    m = small_model()
    with pytest.raises(ValueError, match=r"expected input of size 32x32.*got 48x40"):
        m(torch.randn(1, 3, 48, 40))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m(torch.randn(1, 1, 32, 32))


def test_dynamic_img_size_resizes_pos_embed(small_model):
    from vimc.checkpoint import resize_pos_embed

    m = randomize_(small_model(dynamic_img_size=True)).eval()
    x = torch.randn(2, 3, 48, 40)
    fixed = small_model(img_size=(48, 40)).eval()
    sd = m.state_dict()
    sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], (4, 4), (6, 5))
    fixed.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(m(x), fixed(x), **DYNAMIC_VS_FIXED_IMG_SIZE)
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# ---------------------------------------------------------------------------------------------
# vim.md, written out literally from the state_dict: the oracle for the model's plumbing
# ---------------------------------------------------------------------------------------------


def _rmsnorm(x, w):
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()


def _branch(sd, prefix, xx, z, s, A_name, N):
    """One direction of vim.md's mixer: causal conv (padding 3, cut to L), silu, x_proj,
    dt_proj without bias, the reference scan with delta_bias and softplus."""
    E, L = xx.shape[1], xx.shape[2]
    R = sd[f"{prefix}dt_proj{s}.weight"].shape[1]
    u = F.silu(
        F.conv1d(
            xx, sd[f"{prefix}conv1d{s}.weight"], sd[f"{prefix}conv1d{s}.bias"], padding=3, groups=E
        )[..., :L]
    )
    x_dbl = u.transpose(1, 2) @ sd[f"{prefix}x_proj{s}.weight"].T
    dt = sd[f"{prefix}dt_proj{s}.weight"] @ x_dbl[..., :R].transpose(1, 2)
    Bm = x_dbl[..., R : R + N].transpose(1, 2)
    Cm = x_dbl[..., R + N :].transpose(1, 2)
    A = -torch.exp(sd[prefix + A_name].float())
    return selective_scan_reference(
        u,
        dt,
        A,
        Bm,
        Cm,
        D=sd[f"{prefix}D{s}"].float(),
        z=z,
        delta_bias=sd[f"{prefix}dt_proj{s}.bias"].float(),
        delta_softplus=True,
    )


def _vim_md_forward(sd, img, depth, patch, stride, N=16):
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=stride)
    x = x.flatten(2).transpose(1, 2)
    B, M, D = x.shape
    p = M // 2
    x = torch.cat([x[:, :p], sd["cls_token"].expand(B, 1, D), x[:, p:]], 1) + sd["pos_embed"]
    hidden, residual = x, None
    for i in range(depth):
        pre = f"layers.{i}.mixer."
        residual = hidden if residual is None else residual + hidden
        residual = residual.float()
        h = _rmsnorm(residual, sd[f"layers.{i}.norm.weight"]).to(hidden.dtype)
        xz = (h @ sd[pre + "in_proj.weight"].T).transpose(1, 2)
        E = xz.shape[1] // 2
        xx, z = xz[:, :E], xz[:, E:]
        y_f = _branch(sd, pre, xx, z, "", "A_log", N)
        y_b = _branch(sd, pre, xx.flip(-1), z.flip(-1), "_b", "A_b_log", N).flip(-1)
        hidden = ((y_f + y_b) / 2).transpose(1, 2) @ sd[pre + "out_proj.weight"].T
    residual = residual + hidden
    feat = _rmsnorm(residual, sd["norm_f.weight"])[:, p]
    return feat @ sd["head.weight"].T + sd["head.bias"]


@pytest.mark.parametrize("img,patch,stride", [(32, 8, 8), (24, 8, 4)])
def test_forward_matches_vim_md_literally(small_model, img, patch, stride):
    """Odd and even token counts (the class token's middle position), stride != patch."""
    m = randomize_(small_model(img_size=img, patch_size=patch, stride=stride)).eval()
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        ref = _vim_md_forward(m.state_dict(), x, 2, patch, stride)
        torch.testing.assert_close(m(x), ref, **MODEL_VS_VIM_MD)
        m.scan_impl = "reference"
        torch.testing.assert_close(m(x), ref, **MODEL_VS_VIM_MD)


def test_class_token_sits_in_the_middle(small_model):
    m = small_model(img_size=40, patch_size=8, stride=8).eval()  # M = 25, p = 12
    seen = {}
    m.layers[0].register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]))
    with torch.no_grad():
        m(torch.randn(1, 3, 40, 40))
    x = seen["x"][0]
    torch.testing.assert_close(x[12], (m.cls_token + m.pos_embed[:, 12])[0, 0])


# ---------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", list(HALF_MODEL_VS_FLOAT32.items()))
def test_half_models_track_float32(small_model, dtype, tol):
    """Whole-model .to(dtype): logits within tol (relative to the float32 logits' max), the
    residual stream stays float32, outputs in dtype."""
    m = randomize_(small_model(), scale=0.3).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        mh = m.to(dtype)
        residuals = []
        mh.layers[1].register_forward_hook(lambda mod, a, out: residuals.append(out[1]))
        out = mh(x.to(dtype))
    assert out.dtype == dtype and residuals[0].dtype == torch.float32
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < tol, f"{dtype}: relative error {err:.3g}"


def test_autocast_bfloat16(small_model):
    m = randomize_(small_model(), scale=0.3).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() / ref.abs().max() < AUTOCAST_BF16_VS_FLOAT32


# ---------------------------------------------------------------------------------------------
# initialization
# ---------------------------------------------------------------------------------------------


def test_official_initialization():
    m = vimc.create_model("vim_tiny", depth=4)
    N, R = 16, 12
    mx = m.layers[3].mixer
    expected_A = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(384, N)
    torch.testing.assert_close(mx.A_log.data, expected_A)
    torch.testing.assert_close(mx.A_b_log.data, expected_A)
    assert (mx.D == 1).all() and (mx.D_b == 1).all()
    dt = F.softplus(mx.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - DT_INIT_RANGE_REL) and dt.max() <= 0.1 * (1 + DT_INIT_RANGE_REL)
    assert mx.dt_proj.weight.abs().max() <= R**-0.5
    assert (mx.dt_proj_b.bias == 0).all()  # zeroed with the other Linear biases, as officially
    assert (mx.conv1d.bias.abs() > 0).any()  # conv biases keep PyTorch's default init
    bound = (1 / 384) ** 0.5 / math.sqrt(4)  # kaiming-uniform(a=sqrt5) / sqrt(depth)
    assert mx.out_proj.weight.abs().max() <= bound and mx.out_proj.weight.abs().max() > bound / 2
    assert (m.head.bias == 0).all()
    assert abs(m.head.weight.std().item() - 0.02) < INIT_STD_TRUNC_NORMAL
    assert abs(m.pos_embed.std().item() - 0.02) < INIT_STD_TRUNC_NORMAL
    w = m.patch_embed.proj.weight
    assert abs(w.std().item() - (1 / (3 * 16 * 16)) ** 0.5) < INIT_STD_LECUN_NORMAL
    assert (m.patch_embed.proj.bias == 0).all()


def test_drop_path_rates_shifted_by_one():
    m = vimc.create_model("vim_tiny", depth=5, drop_path_rate=0.4, device="meta")
    rates = [getattr(layer.drop_path, "drop_prob", 0.0) for layer in m.layers]
    assert rates == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])
    assert m.drop_path.drop_prob == pytest.approx(0.4)
