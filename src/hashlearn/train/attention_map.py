"""``hashlearn attention --run RUN --image X.png --out map.png``: the spatial-attention map of a
trained run (ATH, spec §2) drawn over an image — what a clinician reads to see where the network
looked.

The image is read as encoding reads it (:func:`hashlearn.data.read_image` at the run's image size,
the run's colour mode), the run's model (:func:`hashlearn.load_run`) runs on it in eval mode, and its
head's ``extras["attention"]`` ``(1, 1, h, w)`` — values in (0, 1) — is scaled bilinearly to the
image and drawn in three panels: the image, the map, the map over the image. A run whose method
has no attention map (its class lacks ``attention_map = True``; every shallow method) is refused
with one line, before its weights are loaded. Only the standard library is imported at top level.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    a = sub.add_parser(
        "attention",
        help="draw a trained run's spatial-attention map over an image (methods with attention, e.g. ath)",
        description="Run the model of RUN on one image and draw its spatial-attention map over it: the image, "
                    "the map (0..1) and the map over the image, side by side.",
    )
    a.add_argument("--run", required=True, help="run folder of one code length (e.g. runs/ath/48bits) or a model "
                   "file from hashlearn export (.hlm)")
    a.add_argument("--image", required=True, help="the image file")
    a.add_argument("--out", required=True, help="the picture to write (.png, or another matplotlib format)")
    a.set_defaults(func=cmd_attention)


def cmd_attention(args) -> int:
    out = draw_attention(args.run, args.image, args.out)
    print(f"wrote {out}")
    return 0


def check_attention_run(run) -> str:
    """The method name of the run folder (or exported model file) ``run``; an :class:`InputError` when it
    has no attention map."""
    from hashlearn.errors import InputError
    from hashlearn.train.model import existing_run_dir, method_kind
    from hashlearn.train.runfolder import read_run_config

    if Path(run).is_file():  # a model file from hashlearn export
        from hashlearn.train.export import model_file_config

        run_dir, config = Path(run), model_file_config(run)
    else:
        run_dir = existing_run_dir(run)
        config = read_run_config(run_dir)
    cls, kind = method_kind(config.method)
    if kind != "deep" or not getattr(cls, "attention_map", False):
        raise InputError(f"{run_dir}: method {config.method} has no attention map (methods with one: ath)")
    return config.method


def attention_of(hasher, image):
    """``(image uint8 (H, W, C), map float (h, w))``: the run's attention map of one image already
    read at the run's size."""
    import numpy as np
    import torch

    from hashlearn.errors import InputError

    model = hasher.model
    model.eval()
    x = model.backbone.preprocess(hasher._images(image[None]), hasher.image_size)
    with torch.no_grad():
        out = model(x.to(next(model.parameters()).device))
    amap = out.extras.get("attention")
    if amap is None:
        raise InputError(f"{hasher.run_dir}: the model returned no attention map (method {hasher.method})")
    return np.asarray(amap[0, 0].float().cpu().numpy())


def draw_attention(run, image_path, out) -> Path:
    """Write the picture of ``run``'s attention map over ``image_path`` to ``out`` (its format from the
    extension; none → ``.png``) and return its path."""
    import torch

    from hashlearn.data import read_image
    from hashlearn.errors import NotFoundError
    from hashlearn.eval.plots import check_plot_path

    out = check_plot_path(out, "--out")
    image_path = Path(image_path)
    if not image_path.is_file():
        raise NotFoundError(f"image not found: {image_path}")
    check_attention_run(run)
    from hashlearn.train.model import load_run

    hasher = load_run(run)
    mode = "L" if hasher.channels == 1 else "RGB"
    image = read_image(image_path, size=hasher.image_size, mode=mode)
    amap = attention_of(hasher, image)
    h, w = image.shape[:2]
    up = torch.nn.functional.interpolate(torch.from_numpy(amap)[None, None], size=(h, w), mode="bilinear",
                                         align_corners=False)[0, 0].numpy()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = image[..., 0] if image.shape[-1] == 1 else image
    cmap = "gray" if image.shape[-1] == 1 else None
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    axes[0].imshow(shown, cmap=cmap)
    axes[0].set_title(image_path.name, fontsize=9)
    im = axes[1].imshow(up, cmap="jet", vmin=0, vmax=1)
    axes[1].set_title(f"attention ({amap.shape[0]}×{amap.shape[1]}, {amap.min():.2f}–{amap.max():.2f})", fontsize=9)
    axes[2].imshow(shown, cmap=cmap)
    axes[2].imshow(up, cmap="jet", vmin=0, vmax=1, alpha=0.45)
    axes[2].set_title(f"{hasher.method}, {hasher.bits} bits", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02)
    out.parent.mkdir(parents=True, exist_ok=True)
    from hashlearn._atomic import atomic_target

    with atomic_target(out) as tmp:
        fig.savefig(tmp, dpi=110, format=out.suffix[1:].lower())
    plt.close(fig)
    return out
