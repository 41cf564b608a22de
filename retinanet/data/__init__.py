"""Data: COCO-format datasets (coco, validate), augmentations and resize (transforms), batching
(collate, sampler, loaders), the synthetic demo set (synthetic) and photo-like set (synthetic_photos). Normalization and padding live in
`retinanet.modeling.preprocess`, shared with `Detector`."""
