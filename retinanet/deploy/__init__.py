"""Deployment: export with constants folded, the file metadata, and the onnxruntime and OpenVINO runtimes."""
