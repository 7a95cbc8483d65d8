"""One pre-training step and one fine-tuning step with vitmim's own parts and no engine.

What ``vitmim pretrain`` and ``vitmim finetune`` repeat for every batch, on random images; the
engine (src/vitmim/engine.py) adds the lr schedule, weight-decay groups, EMA, checkpoints and
augmentation around the same calls.

    python examples/one_step.py
"""

import torch
import torch.nn.functional as F

from vitmim.augment import normalize
from vitmim.config import load_config
from vitmim.masking import random_mask
from vitmim.models import build_classifier, build_restorer, transfer
from vitmim.models.restorer import forward_loss

cfg = load_config(overrides=["model.embed_dim=64", "model.depth=2", "model.num_heads=2"])
torch.manual_seed(0)
images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)  # as the data cache holds them
labels = torch.randint(0, 10, (8,))
x = normalize(images)  # (B, 3, H, W) float, the data set's mean and std

## pre-training: hide mask_ratio of the mask_patch px cells, restore them, L1 on the hidden pixels
restorer = build_restorer(cfg.model, cfg.pretrain)
opt = torch.optim.AdamW(restorer.parameters(), lr=cfg.pretrain.lr)
mask = random_mask(
    len(x), cfg.model.img_size, cfg.pretrain.mask_patch, cfg.pretrain.mask_ratio
)  # (B, 1, H, W), 1 = masked
pred = restorer(x, mask)  # forward_encoder (visible tokens) -> forward_decoder: (B, 3, H, W)
loss = forward_loss(pred, x, mask, cfg.pretrain, cfg.model.patch_size)
loss.backward()
opt.step()
print(f"pre-training loss {loss.item():.4f}")

## transfer: the encoder's weights into a classifier with a new head; the decoder is dropped
classifier = build_classifier(cfg.model, num_classes=10)
print(transfer(restorer.state_dict(), classifier).summary())

## fine-tuning: cross-entropy on the labels
opt = torch.optim.AdamW(classifier.parameters(), lr=cfg.finetune.lr)
logits = classifier(x)  # (B, 10)
loss = F.cross_entropy(logits, labels, label_smoothing=cfg.finetune.label_smoothing)
loss.backward()
opt.step()
print(f"fine-tuning loss {loss.item():.4f}")
