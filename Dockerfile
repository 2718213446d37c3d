# pneumo web service, CPU only.
#   docker build --build-arg PNEUMO_COMMIT=$(git describe --always --dirty --abbrev=7) -t pneumo .
#   docker run --rm -p 8000:8000 pneumo                          # the shipped default model
#   docker run --rm -p 8000:8000 -v "$PWD/runs/default:/model:ro" -e PNEUMO_API_KEY=change-me \
#       pneumo pneumo serve --host 0.0.0.0 --model /model         # your own run, with an API key
#   (under --read-only a mounted run cannot be exported to ONNX at start, and is served with PyTorch: mount the folder
#   `pneumo export --model RUN --out DIR` wrote instead)
# Then open http://localhost:8000/ (the page) or http://localhost:8000/docs (the API).
# Build arguments: BASE_IMAGE (any image with Python 3.11 and its venv module), TORCH_INDEX_URL (where the torch
# wheels come from). tools/build_image.sh builds it without a Docker engine (buildah) from a Debian base.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The CPU wheels from the PyTorch index: the default PyPI wheels would pull in the CUDA libraries (gigabytes).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A virtual environment: works the same on python:3.11-slim and on a distribution's Python (PEP 668).
RUN python3 -m venv /opt/venv

RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url ${TORCH_INDEX_URL}

WORKDIR /opt/pneumo
COPY pyproject.toml setup.py MANIFEST.in LICENSE README.md constraints.txt ./
COPY src ./src
# The commit the image is built from, recorded in every output (the build context has no .git):
#   docker build --build-arg PNEUMO_COMMIT=$(git describe --always --dirty --abbrev=7) -t pneumo .
ARG PNEUMO_COMMIT=
RUN if [ -n "$PNEUMO_COMMIT" ]; then echo "$PNEUMO_COMMIT" > src/pneumo/BUILD_COMMIT; fi
# Every dependency at the version the tests ran against (constraints.txt, written by tools/constraints.py): two builds
# of one commit get the same libraries. The CPU torch above satisfies its pin (2.14.1+cpu matches ==2.14.1).
# The `dicom` extra: the decoders of the compressed DICOM a PACS exports (JPEG Lossless, JPEG-LS, 12-bit JPEG).
RUN pip install -c constraints.txt '.[dicom]' && rm -rf /opt/pneumo/src /opt/pneumo/build

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin pneumo
# The shipped model's ONNX export, made (and its SHA-256 recorded) at build time: the service does not export it again
# at every start (~8 s) and runs it on ONNX Runtime under `docker run --read-only --tmpfs /tmp` too (the decode
# workers need a writable temporary folder). The shipped model's export stays root's and read-only in a sticky
# folder the service user can add to: a mounted model of your own is exported once per container, and a compromised
# service process cannot replace the export it serves (a cache review); matplotlib (heat maps) gets a temp folder.
ENV PNEUMO_CACHE=/opt/pneumo-cache \
    MPLCONFIGDIR=/tmp/matplotlib
RUN python -c "from pneumo.infer.predictor import Predictor; Predictor(None, backend='onnx')" \
    && chown -R root:pneumo /opt/pneumo-cache \
    && find /opt/pneumo-cache -type d -exec chmod 1775 {} + \
    && find /opt/pneumo-cache -type f -exec chmod 0444 {} +
USER pneumo
WORKDIR /home/pneumo

# The port: `pneumo serve` and the health check both read PNEUMO_PORT (`docker run -e PNEUMO_PORT=9000 -p 9000:9000`);
# a `--port` given on the command line is not seen by the health check.
ENV PNEUMO_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PNEUMO_PORT', '8000'), timeout=4).status != 200)"]
CMD ["pneumo", "serve", "--host", "0.0.0.0"]
