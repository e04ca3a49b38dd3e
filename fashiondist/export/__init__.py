"""PyTorch -> ONNX export, verified against PyTorch, with optional int8 quantization.

    from fashiondist.export.exporter import export_checkpoint, export_model   # checkpoint -> checked file
    from fashiondist.export.graph import to_onnx, check_parity                # the graph and its parity check
    from fashiondist.export.check_images import load_check_images             # the run's validation images

Import the submodules directly (they import torch and onnx); importing this package alone stays instant.
"""
