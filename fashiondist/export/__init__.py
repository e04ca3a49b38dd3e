"""PyTorch -> ONNX export, verified against PyTorch, with optional int8 quantization.

    from fashiondist.export.exporter import export_checkpoint, export_model, load_check_images

Import the submodules directly (they import torch and onnx); importing this package alone stays instant.
"""
