#!/usr/bin/env bash
# The main job on a fresh machine (after tools/install.sh): a store with a real MiMei in
# it, mounted. Imports the Python standard library (found with sysconfig: a real tree
# nobody here wrote) into a MiMei, backs it up as v/0, mounts the store and says where
# to look. Idempotent: run it again and it reuses the store and the MiMei.
#
#   bash tools/demo.sh [MOUNTPOINT]        (default /tmp/mimeifs)
#
# The store is the default one ($MIMEIFS_STORE, else ~/.local/share/mimeifs), so plain
# `mimeifs ...` commands work on it afterwards.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIMEIFS_VENV:-$REPO/.venv}"
MM="$VENV/bin/mimeifs"
MNT="${1:-/tmp/mimeifs}"
PY="$VENV/bin/python"

SRC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
STORE="$("$PY" -c 'from mimeifs.engine.db import default_store_path; print(default_store_path())')"

[ -e "$STORE/node.key" ] || "$MM" init
ID="$("$MM" create --type fs --mark stdlib --app-type python-stdlib)"
echo "MiMei stdlib: $ID"
if [ -z "$("$MM" log "$ID")" ]; then
    "$MM" import "$SRC" "$ID" --backup -m "Python standard library from $SRC"
fi
"$MM" log "$ID"
mkdir -p "$MNT"
if mountpoint -q "$MNT"; then "$MM" umount "$MNT"; fi
"$MM" mount "$MNT"
cat <<MSG

Mounted. Look around:
  ls $MNT/mm/$ID/            cur (writable), v/ (versions), last -> v/N, .info, .refs/
  ls $MNT/name/               stdlib -> ../mm/$ID
  diff -r $SRC $MNT/mm/$ID/v/0 && echo same
  getfattr -d $MNT/mm/$ID/v/0/json/__init__.py     (its blake3: b3sum prints the same)
  echo hi > $MNT/mm/$ID/cur/hello.txt && $MM backup stdlib -m "said hi"
  $MM umount $MNT             when done (store: $STORE)
MSG
