#!/usr/bin/env bash
# The CPU demo, end to end on a fresh clone: install the requirements, write the phantom data
# set, train a small U-Net with train.py, evaluate it with test.py (per-organ table at the end).
# About 2 minutes on 2 CPU cores plus the install (README, Quick start). Override DATA, OUT or
# EPOCHS from the environment.
set -euo pipefail
cd "$(dirname "$0")"
DATA=${DATA:-data/phantom}
OUT=${OUT:-runs/demo}
EPOCHS=${EPOCHS:-24}

python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
# --overwrite replaces only a folder this generator made (it holds a .synthetic-dataset marker);
# pointing DATA at real data stops here with exit 2 and deletes nothing.
python3 -m datasets.synthetic.synapse --out "$DATA" --overwrite
# A U-Net with 8 base channels at 128x128 and no augmentation: what learns all eight organs
# within minutes on a CPU (see README, "Quick start"). The rest is the published recipe.
python3 train.py --root_path "$DATA/train_npz" --test_path "$DATA/test_vol_h5" --list_dir "$DATA/lists" \
    --module networks.UNet.UNet --model_kwargs '{"base_channels": 8}' --img_size 128 --batch_size 8 \
    --max_epochs "$EPOCHS" --eval_interval "$EPOCHS" --augment none --output_dir "$OUT" --overwrite
python3 test.py --volume_path "$DATA" --list_dir "$DATA/lists" --output_dir "$OUT" --max_epochs "$EPOCHS" --save_png
