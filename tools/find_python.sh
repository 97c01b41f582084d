#!/bin/sh
# Print the path of a Python >= 3.12 for `make`: the PATH first (python3.12, python3.13, python3),
# then the versions pyenv has installed (3.12 before newer ones). pyenv's shims for versions that
# are installed but not selected fail when run, so every candidate is run once to check it.
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
for name in python3.12 python3.13 python3; do
  path=$(command -v "$name" 2>/dev/null) && ok "$path" && { echo "$path"; exit 0; }
done
root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for path in $(ls -d "$root"/versions/3.12*/bin/python3 "$root"/versions/3.1[3-9]*/bin/python3 2>/dev/null); do
  ok "$path" && { echo "$path"; exit 0; }
done
exit 1
