"""Evaluation: COCO metrics, the operating point, the model card and drawing. Knows no training loop and no dataset class: it reads COCO json and detection records."""
