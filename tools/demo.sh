#!/usr/bin/env bash
# The main job (`make demo`): config-driven training on the real data in ../shared/datasets.
#   1. MMSeg DeepLabV3 (OS16, multi-grid 1-2-4) with an Elastic-ResNeXt50 backbone on the VOC 2012 subset,
#      reporting mIoU on its val split;
#   2. MMDet Mask R-CNN FPN with Elastic-ResNeXt50 on the COCO 2017 subset, reporting bbox and segm AP
#      through pycocotools.
# Longer than the CI-sized runs in the tests (DEMO_SEG_ITERS / DEMO_DET_ITERS, defaults 300 / 200).
# Where ../shared/datasets (or $DYNSCALE_DATASETS) lacks a dataset, a small synthetic one in the same layout is
# generated under the work dir, so the demo runs anywhere.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${DYNSCALE_VENV:-$ROOT/.venv}/bin/python"
if [ -n "${DYNSCALE_DATA:-}" ]; then
  echo "[demo] DYNSCALE_DATA was renamed DYNSCALE_DATASETS: export DYNSCALE_DATASETS=$DYNSCALE_DATA and unset DYNSCALE_DATA" >&2
  exit 2
fi
DATA="${DYNSCALE_DATASETS:-$ROOT/../shared/datasets}"
WORK="${DEMO_WORK_DIR:-$ROOT/work_dirs/demo}"
SEG_ITERS="${DEMO_SEG_ITERS:-300}"
DET_ITERS="${DEMO_DET_ITERS:-200}"
mkdir -p "$WORK"

SEG_DATA="$DATA"
if [ ! -f "$DATA/VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt" ]; then
  SEG_DATA="$WORK/synthetic"
  echo "[demo] no VOC 2012 under $DATA: generating a synthetic set in $SEG_DATA"
  "$PY" "$ROOT/tools/make_synthetic_voc.py" "$SEG_DATA/VOCdevkit/VOC2012" --train 64 --val 16
fi
DET_DATA="$DATA"
if [ ! -f "$DATA/coco/annotations/instances_train2017.json" ]; then
  DET_DATA="$WORK/synthetic"
  echo "[demo] no COCO 2017 under $DATA: generating a synthetic set in $DET_DATA"
  "$PY" "$ROOT/tools/make_synthetic_coco.py" "$DET_DATA/coco" --train 32 --val 16
fi

echo "[demo] 1/2 DeepLabV3 Elastic-ResNeXt50 on VOC ($SEG_ITERS iterations)"
"$PY" "$ROOT/tools/train_seg.py" \
  "$ROOT/seg_configs/deeplabv3_elastic-resnext50-d16-mg124_1xb4-300it_voc12subset-193x193.py" \
  --work-dir "$WORK/seg" --data-root "$SEG_DATA" \
  --cfg-options train_cfg.max_iters="$SEG_ITERS" train_cfg.val_interval="$SEG_ITERS" \
  param_scheduler.0.end="$SEG_ITERS" default_hooks.checkpoint.interval="$SEG_ITERS"

echo "[demo] 2/2 Mask R-CNN Elastic-ResNeXt50-FPN on COCO ($DET_ITERS iterations)"
"$PY" "$ROOT/tools/train_det_mm.py" \
  "$ROOT/det_configs/mmdet/elastic/mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py" \
  --work-dir "$WORK/det" --data-root "$DET_DATA" \
  --cfg-options train_cfg.max_iters="$DET_ITERS" train_cfg.val_interval="$DET_ITERS" \
  default_hooks.logger.interval=10

echo "[demo] done: logs, checkpoints and metrics under $WORK/{seg,det}"
