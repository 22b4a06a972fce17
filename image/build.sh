#!/bin/sh
# Kestrel SD-card image recipe (docs/image.md). Examples:
#   image/build.sh --board rpi4 --stage rootfs-overlay --out /tmp/img   # no root, no network
#   sudo image/build.sh --board rpi4                                     # overlay, rootfs, image
#   image/build.sh --board rpi4 --dry-run                                # print every command
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
    echo "kestrel-image: error: $python not found (apt-get install python3)" >&2
    exit 64
fi
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m kimage "$@"
