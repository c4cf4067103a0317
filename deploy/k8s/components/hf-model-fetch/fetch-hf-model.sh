#!/bin/sh
# Fills $MODEL_DIR with the Hugging Face repository $MODEL_REPO at $MODEL_REVISION (only the
# *.json and *.safetensors files the worker loads), unless an earlier pod already did.
# Pods racing on a shared volume each download into their own directory and rename it into
# place; the rename is atomic and only the first one wins.
set -eu
marker="$MODEL_DIR/.tokenfleet-complete"
if [ -f "$marker" ]; then
    echo "fetch-model: $MODEL_DIR already holds $(cat "$marker")"
    exit 0
fi
echo "fetch-model: downloading $MODEL_REPO@$MODEL_REVISION into $MODEL_DIR"
pip install --quiet --no-cache-dir --disable-pip-version-check --target /tmp/pylib "huggingface_hub==$HF_HUB_VERSION"
PYTHONPATH=/tmp/pylib exec python3 - <<'PY'
import os
import pathlib
import shutil
import socket

from huggingface_hub import snapshot_download

repo = os.environ["MODEL_REPO"]
rev = os.environ.get("MODEL_REVISION") or "main"
dest = pathlib.Path(os.environ["MODEL_DIR"])
part = dest.with_name(f".{dest.name}.part-{socket.gethostname()}")
shutil.rmtree(part, ignore_errors=True)
snapshot_download(
    repo_id=repo,
    revision=rev,
    local_dir=part,
    token=os.environ.get("HF_TOKEN") or None,
    allow_patterns=["*.json", "*.safetensors"],
)
shutil.rmtree(part / ".cache", ignore_errors=True)
(part / ".tokenfleet-complete").write_text(f"{repo}@{rev}\n")
try:
    part.rename(dest)  # replaces an empty directory; fails if dest has files
except OSError:
    if (dest / ".tokenfleet-complete").exists():
        shutil.rmtree(part)  # another pod finished first
    else:
        raise SystemExit(f"fetch-model: {dest} exists without a complete download; remove it")
print(f"fetch-model: {dest} holds {repo}@{rev}")
PY
