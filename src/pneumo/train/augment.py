"""Batched augmentation on whatever device the batch is on (the GPU when there is one): random affine (rotation,
scale, translation), brightness / contrast / gamma, optional horizontal flip, and optional Gaussian blur, Gaussian
noise and random erasing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pneumo.config import AugmentConfig


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a float batch (B, 1, H, W) in [0, 1]; the generator must live on ``x.device``."""
    n, device = x.shape[0], x.device
    angle = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, generator, device) * (math.pi / 180)
    scale = _uniform(n, 1 - cfg.scale, 1 + cfg.scale, generator, device)
    shift = _uniform(2 * n, -cfg.translate, cfg.translate, generator, device).view(n, 2) * 2  # grid units: [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    if cfg.hflip:
        flip = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)
    else:
        flip = torch.ones(n, device=device)
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    view = (n, 1, 1, 1)
    brightness = _uniform(n, -cfg.brightness, cfg.brightness, generator, device).view(view)
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator, device).view(view)
    gamma = torch.exp(_uniform(n, -cfg.gamma, cfg.gamma, generator, device)).view(view)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp(0, 1)
    x = x.clamp_min(1e-6).pow(gamma).clamp(0, 1)
    if cfg.resolution > 0:
        x = low_resolution(x, cfg.resolution, generator)
    if cfg.jpeg > 0:
        x = jpeg(x, cfg.jpeg, generator)
    if cfg.collimation > 0:
        x = collimate(x, cfg.collimation, generator)
    if cfg.blur > 0:
        x = gaussian_blur(x, _uniform(n, 0.0, cfg.blur, generator, device))
    if cfg.noise > 0:
        std = _uniform(n, 0.0, cfg.noise, generator, device).view(view).to(x.dtype)
        x = (x + std * torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)).clamp(0, 1)
    return random_erase(x, cfg.erase, generator) if cfg.erase > 0 else x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (B, 1, H, W) with its own Gaussian ``sigma`` (pixels; 0 leaves it unchanged), batched:
    one separable grouped convolution, kernel radius 3 sigma of the largest, reflect padding."""
    n = x.shape[0]
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    s = sigma.float().clamp_min(1e-3).view(n, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / s) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.dtype)  # (B, K); sigma -> 0 gives a unit impulse
    out = F.pad(x.transpose(0, 1), (radius, radius, radius, radius), mode="reflect")  # (1, B, H+2r, W+2r)
    out = F.conv2d(out, kernel.view(n, 1, 1, -1), groups=n)
    out = F.conv2d(out, kernel.view(n, 1, -1, 1), groups=n)
    return out.transpose(0, 1)


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator,
                 area: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020, the torchvision/timm ranges), batched: with probability ``p`` per image, one
    rectangle of ``area`` x the image and aspect ``ratio`` is replaced by uniform noise. Hides whatever a model could
    key on in one place (a marker, a corner), so the decision must rest on more of the image."""
    n, _, h, w = x.shape
    device = x.device
    on = torch.rand(n, generator=generator, device=device) < p
    size = _uniform(n, *area, generator, device) * (h * w)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device))
    eh = torch.sqrt(size * aspect).clamp(1, h)
    ew = torch.sqrt(size / aspect).clamp(1, w)
    top = torch.rand(n, generator=generator, device=device) * (h - eh)
    left = torch.rand(n, generator=generator, device=device) * (w - ew)
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    box = ((ys >= top.view(n, 1, 1)) & (ys < (top + eh).view(n, 1, 1))
           & (xs >= left.view(n, 1, 1)) & (xs < (left + ew).view(n, 1, 1)) & on.view(n, 1, 1))
    noise = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype)
    return torch.where(box.unsqueeze(1), noise, x)


def low_resolution(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """With probability 1/2 per image: down-sample (area) by a factor uniform in [1 - strength, 1], up again."""
    n, _, h, w = x.shape
    on = torch.rand(n, generator=generator, device=x.device) < 0.5
    factor = _uniform(n, 1 - strength, 1.0, generator, x.device)
    out = x.clone()
    for i in torch.nonzero(on).flatten().tolist():
        size = (max(8, round(h * float(factor[i]))), max(8, round(w * float(factor[i]))))
        small = F.interpolate(x[i : i + 1], size=size, mode="area")
        out[i : i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def jpeg(x: torch.Tensor, min_quality: int, generator: torch.Generator) -> torch.Tensor:
    """With probability 1/2 per image: a JPEG round trip (Pillow's libjpeg) at a quality uniform in [min_quality, 95]."""
    import io

    import numpy as np
    from PIL import Image

    n = x.shape[0]
    on = torch.rand(n, generator=generator, device=x.device) < 0.5
    quality = torch.randint(min_quality, 96, (n,), generator=generator, device=x.device)
    out = x.clone()
    for i in torch.nonzero(on).flatten().tolist():
        img = (x[i, 0].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(quality[i]))
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), dtype=np.float32) / 255
        out[i, 0] = torch.from_numpy(back).to(x.device, x.dtype)
    return out


def collimate(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """With probability 1/2 per image: black borders, each side uniform in [0, fraction] of the image."""
    n, _, h, w = x.shape
    on = (torch.rand(n, generator=generator, device=x.device) < 0.5).view(n, 1, 1)
    edge = _uniform(4 * n, 0.0, fraction, generator, x.device).view(n, 4)
    ys = torch.arange(h, device=x.device).view(1, h, 1) / h
    xs = torch.arange(w, device=x.device).view(1, 1, w) / w
    inside = ((ys >= edge[:, 0].view(n, 1, 1)) & (ys < 1 - edge[:, 1].view(n, 1, 1))
              & (xs >= edge[:, 2].view(n, 1, 1)) & (xs < 1 - edge[:, 3].view(n, 1, 1)))
    return torch.where((inside | ~on).unsqueeze(1), x, torch.zeros_like(x))
