"""The service's HTTP contract: response models, the upload body and error codes for the OpenAPI schema, and the
content security policy."""

from __future__ import annotations

import base64
import hashlib

from pydantic import BaseModel, ConfigDict, Field

DESCRIPTION = ("Pneumonia detection in frontal chest X-rays (JPEG, PNG or DICOM; also BMP, GIF, TIFF, WebP), with "
               "the model its card (GET /api/v1/model) describes: the shipped one is for pediatric images like "
               "Guangzhou's, an adapted one for the site it was adapted to. "
               "**Research use only — not a medical device.**")


def content_security_policy(*inline_scripts: str) -> str:
    """The service's CSP: everything from this origin only; ``inline_scripts`` (exact texts) allowed by hash."""
    hashes = [base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
              for script in inline_scripts]
    script_src = " ".join(["'self'", *(f"'sha256-{digest}'" for digest in hashes)])
    return ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
            f"script-src {script_src}; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'self'")


CSP = content_security_policy()


class Timings(BaseModel):
    decode: float
    inference: float
    total: float
    heatmap: float | None = None


class PredictResponse(BaseModel):
    p_pneumonia: float = Field(description="the model's score, which the threshold applies to")
    p_calibrated: float = Field(description="the probability after temperature scaling (fitted where the model's card says: its val "
                                                "fold, or an adaptation's cross-fitted scores)")
    label: str = Field(description="the verdict: a class name, or 'not assessed' (then see reason)")
    threshold: float
    threshold_calibrated: float | None = Field(None, description="the same threshold on the calibrated scale "
                                               "(binary models): p_calibrated >= it exactly when p_pneumonia >= "
                                               "threshold")
    assessed: bool = Field(True, description="false: no verdict for this image (reason says why)")
    reason: str | None = None
    refused: str | None = Field(None, description="when not assessed, the kind, for counting: input, non-finite, "
                                "out-of-distribution or orientation")
    threshold_policy: str | None = Field(None, description="the policy that chose the threshold; absent: a "
                                         "placeholder threshold, not chosen on validation")
    probabilities: dict[str, float] = Field(description="calibrated probability of each class (after temperature "
                                            "scaling). Not the verdict: the verdict is label, decided at threshold "
                                            "(rarely 0.5), so the largest of these can name the other class; "
                                            "for a binary model compare p_calibrated with threshold_calibrated; a 3-class model's verdict is "
                                            "normal when its uncalibrated P(pneumonia) is below threshold, which no "
                                            "single calibrated value matches")
    model_id: str = Field(description="the architecture and the first 12 hex digits of the weights' SHA-256")
    request_id: str = Field(description="as the X-Request-ID header and the service's audit log line: the caller's "
                            "X-Request-ID if it is a token of at most 64 characters [A-Za-z0-9._:-], else a new one")
    timings_ms: Timings
    ood_score: float | None = Field(None, description="Mahalanobis distance of the image's features to the training "
                                    "features (absent when the model has no OOD statistics)")
    ood: bool | None = Field(None, description="true: outside what this model was trained on (score above the limit "
                             "set on the images the model's card names) -- don't trust the label")
    heatmap_png_base64: str | None = None
    preview_png_base64: str | None = None


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model_id: str
    backend: str
    classes: list[str]
    input_size: int
    threshold: float
    warning: str | None = Field(None, description="what the model's records say against using it at this operating "
                                "point (e.g. an adaptation's 'do not deploy'); null: nothing")
    card_markdown: str | None = None


class ErrorResponse(BaseModel):
    detail: str
    request_id: str | None = Field(None, description="a predict answer's X-Request-ID, as in the header")


class Ready(BaseModel):
    status: str = Field(description="'ready'")
    model_id: str
    backend: str = Field(description="'onnx' or 'torch'")
    threshold: float = Field(description="the operating point answering (on the uncalibrated P(pneumonia))")
    threshold_policy: str | None = Field(description="the policy that chose it")
    pneumo_version: str = Field(description="the code answering (an operator checks an upgrade or a roll-back here)")


UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    **{kind: {"schema": {"type": "string", "format": "binary"}}  # the raw bytes (curl --data-binary)
       for kind in ("application/octet-stream", "application/dicom", "image/*")},
}}}
ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in (
    (400, "malformed request body"), (401, "missing or wrong API key"), (413, "upload too large"),
    (408, "the upload took too long"), (415, "unsupported content type"), (422, "not an acceptable image, or no file in the field 'file'"),
    (500, "internal error, or a model output that is not a finite number (no verdict)"),
    (501, "heat maps unavailable"), (503, "model not loaded, or busy (then with Retry-After)"))}
