"""The model: backbone, FPN, head, anchors, box coder, matcher, losses, postprocess, input preparation and Detector. Imports nothing above config and structures."""
