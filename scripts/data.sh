#!/usr/bin/env bash
# Downloads Tiny Shakespeare into datasets/ (once) and checks its sha256 (`just data`).
set -euo pipefail
cd "$(dirname "$0")/.."
f=datasets/tinyshakespeare/input.txt
want=86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed
mkdir -p "$(dirname "$f")"
if [ ! -f "$f" ]; then
    curl -fL --retry 3 -o "$f.part" https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
    mv "$f.part" "$f"
fi
got=$(sha256sum "$f" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
    echo "checksum mismatch for $f: $got (want $want)" >&2
    rm -f "$f"
    exit 1
fi
echo "$f OK"
