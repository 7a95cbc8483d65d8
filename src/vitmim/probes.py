"""Frozen-backbone evaluation: k-NN and linear-probe accuracy of a model's pooled features.

Cheap signals of what pre-training learned, without fine-tuning: the backbone of a run (a
pre-trained restorer or a fine-tuned classifier) embeds every image once; then
- k-NN: cosine similarity to the training features, k = 20 nearest neighbours vote with weight
  exp(similarity / 0.07) (the weighted k-NN of InstDisc and DINO);
- linear probe: multinomial logistic regression on standardised features, fitted full-batch with
  L-BFGS (a convex problem: no learning-rate schedule to tune, a few seconds on a CPU).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitmim import checkpoint
from vitmim.augment import normalize
from vitmim.config import Config, check_device, load_config
from vitmim.data import ImageSet, load_splits
from vitmim.errors import CheckpointError, ConfigError, DataError
from vitmim.models import build_classifier, transfer
from vitmim.models.classifier import Classifier
from vitmim.runs import read_model

KNN_K = 20
KNN_TEMPERATURE = 0.07  # softens similarity into vote weights
LINEAR_L2 = 1e-4  # weight penalty of the probe, per feature (standardised units)
LINEAR_STEPS = 100  # L-BFGS iterations


@torch.no_grad()
def extract_features(
    model: Classifier, images: torch.Tensor, device: torch.device, batch: int = 256
) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> mean-pooled backbone tokens (N, D), float32 on the CPU."""
    model.eval().to(device)
    out = []
    for i in range(0, len(images), batch):
        x = normalize(images[i : i + batch].to(device))
        out.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.backbone.embed_dim)


def knn_accuracy(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    val_f: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    batch: int = 1024,
) -> float:
    """Top-1 accuracy (%) of a similarity-weighted k-NN vote. Features (N, D), labels (N,)."""
    train_n = F.normalize(train_f, dim=1)
    k = min(k, len(train_f))
    correct = 0
    for i in range(0, len(val_f), batch):
        sim = F.normalize(val_f[i : i + batch], dim=1) @ train_n.T  # (b, N_train) cosine
        top_sim, top_idx = sim.topk(k, dim=1)  # (b, k)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, train_y[top_idx], (top_sim / temperature).exp())
        correct += int((votes.argmax(1) == val_y[i : i + batch]).sum().item())
    return 100.0 * correct / max(len(val_f), 1)


def linear_probe(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    val_f: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    l2: float = LINEAR_L2,
    steps: int = LINEAR_STEPS,
) -> dict[str, float]:
    """Logistic regression on standardised features; train and val top-1 accuracy (%)."""
    mean, std = train_f.mean(0), train_f.std(0) + 1e-6  # statistics of the training set only
    xt, xv = (train_f - mean) / std, (val_f - mean) / std
    w = torch.zeros(xt.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w + b, train_y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = ((xt @ w + b).argmax(1) == train_y).float().mean().item()
        val_acc = ((xv @ w + b).argmax(1) == val_y).float().mean().item()
    return {"linear_top1": 100 * val_acc, "linear_train_top1": 100 * train_acc}


def probe_model(
    model: Classifier, train: ImageSet, val: ImageSet, device: torch.device, k: int = KNN_K
) -> dict:
    """k-NN and linear-probe accuracy of ``model``'s frozen features on a labelled split."""
    t0 = time.time()
    num_classes = len(train.classes)
    train_f = extract_features(model, train.images, device)
    val_f = extract_features(model, val.images, device)
    result = {
        "knn_top1": knn_accuracy(train_f, train.labels, val_f, val.labels, num_classes, k),
        "knn_k": min(k, len(train_f)),
        **linear_probe(train_f, train.labels, val_f, val.labels, num_classes),
        "n_train": len(train_f),
        "n_val": len(val_f),
        "feature_dim": train_f.shape[1],
    }
    return {**result, "time_s": time.time() - t0}


def model_for_probe(run: str | Path) -> tuple[Classifier, Config, list[str]]:
    """The backbone of a run folder (restorer or classifier) wrapped as a classifier."""
    tensors, meta, _ = read_model(run)
    if meta.get("kind") not in ("restorer", "classifier"):
        raise CheckpointError(
            f"{run}: holds a {meta.get('kind')}, expected a restorer or classifier"
        )
    cfg = load_config(base=meta["config"])
    model = build_classifier(cfg.model, max(1, len(meta["classes"])))
    transfer(tensors, model, str(run))  # the same key checks as fine-tuning's initialisation
    return model, cfg, meta["classes"]


def labelled_splits(cfg: Config, classes: list[str] | None = None) -> tuple[ImageSet, ImageSet]:
    """Training and validation splits of ``cfg.data`` (in ``classes`` label order if given)."""
    if classes is not None:
        cfg.data.classes = classes
    train, val = load_splits(cfg.data, cfg.model.img_size, progress=False, labelled="probing")
    if val is None or not len(val) or (train.labels < 0).any():
        raise DataError(
            f"{cfg.data.path or 'data'}: probing needs labelled training and "
            f"validation images (a val/ folder, or data.val_fraction > 0)"
        )
    return train, val


def pick_device(device: str = "auto") -> torch.device:
    """``--device`` of a command that uses a trained model: ``auto`` is the best available
    (a CUDA GPU, else Apple's MPS, else the CPU); a named one must be present."""
    check_device(device)
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if device == "auto":
        device = next((d for d in ("cuda", "mps") if available[d]), "cpu")
    if not available.get(device.split(":")[0], True):
        raise ConfigError(f"--device {device}: not available on this machine (try --device cpu)")
    return torch.device(device)


def probe_run(
    run: str | Path, data: str | None = None, device: str = "auto", k: int = KNN_K
) -> dict:
    """Probe a run folder's model and write ``probe.json`` beside it; returns the result.

    ``data``: labelled images to probe on (default: the run's own). A restorer pre-trained on an
    unlabelled folder has no classes of its own: pass ``data``, and every class of it is used."""
    if k < 1:
        raise ConfigError(f"--k {k}: expected an integer >= 1 (neighbours in the vote)")
    dev = pick_device(device)
    model, cfg, classes = model_for_probe(run)
    if data:
        cfg.data.path = data
        if cfg.data.source == "unlabelled":  # the run's source; the new data picks its own
            cfg.data.source = "auto"
    if not classes:  # pre-trained without labels: the probe's classes are the data's
        cfg.data.classes = "auto"
    train, val = labelled_splits(cfg, classes or None)
    result = probe_model(model, train, val, dev, k)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    checkpoint.write_json(run_dir / "probe.json", result)
    return result


def probe_random_init(cfg: Config, out: Path, device: str = "cpu", k: int = KNN_K) -> dict:
    """Reference point: the same probes on a randomly initialised backbone (seed
    ``finetune.seed``), written to ``out``. Pre-training should beat it."""
    train, val = labelled_splits(cfg)
    torch.manual_seed(cfg.finetune.seed)
    model = build_classifier(cfg.model, len(train.classes))
    result = probe_model(model, train, val, torch.device(device), k)
    checkpoint.write_json(out, {**result, "init": "random", "seed": cfg.finetune.seed})
    return result
