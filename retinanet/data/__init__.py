"""Data: COCO-format datasets (coco, validate), augmentations and resize (transforms), batching
(collate, sampler, loaders) and the synthetic demo set. Normalization and padding live in
`retinanet.modeling.preprocess`, shared with `Detector`."""
