# The operator image: the operator (`studbook operator`, the chart's Deployment), which also signs
# in its own process (the only pod that sees signing material).
#   docker build -t studbook-operator .
# No ML stack: the operator never imports torch. Dependencies are pinned to the versions the tests
# ran with (requirements/dev.lock, as constraints: only what the operator needs is installed).
# Runs as a non-root user with a read-only root filesystem: scratch space is /tmp (the chart
# mounts an emptyDir there).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TMPDIR=/tmp

WORKDIR /opt/studbook
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY operator/ operator/
COPY trainer-image/ trainer-image/
RUN python -m pip install --constraint requirements/dev.lock ".[cloud]" \
 && python -c "import studbook.controllers.handlers, studbook.artifacts.signing, studbook.cli" \
 && ! python -c "import torch" 2>/dev/null

USER 65532:65532
WORKDIR /tmp

ENTRYPOINT ["python", "-m", "studbook"]
CMD ["operator"]
