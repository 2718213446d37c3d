"""Explanations, in dependency order: ``target`` (the explained score, the input tensor), ``occlusion`` (occlusion and
integrated gradients), ``render`` (colour maps and captions), ``cam`` (Grad-CAM / Grad-CAM++ and `explain_image`,
the one entry point for one image), ``overlay`` (the per-image writer and contact sheet used by predict/explain),
``shortcut``, ``embeddings``, ``filters`` and ``analysis`` (the run report's analysis blocks).

This file holds only the names of the methods, so that importing ``pneumo.explain.cam`` for the service stays cheap.
"""

from __future__ import annotations

CAM_METHODS = ("gradcam", "gradcam++")
METHODS = (*CAM_METHODS, "occlusion", "integrated_gradients")
TARGETS = ("predicted", "pneumonia")  # what a map is evidence for: the predicted label, or always pneumonia
