"""Benchmarks in the product: speed measured side by side in one run and shown as ratios.

    fashiondist bench train --models cnn-dropout,convnet --precision no,bf16     # engine vs bare step vs DataLoader
    fashiondist bench infer --model model.onnx --csv testX.csv --int8 model.int8.onnx
    fashiondist bench time-to-accuracy --recipe convnet --data fashion-mnist --targets 0.90,0.92

Every number is a median over repeats with its min-max; compared variants are interleaved within each
repeat, so drift (thermal, a neighbour's load) falls on all of them alike. Ratios are paired: one per
repeat, from measurements taken next to each other, then their median. Speed goals live here, never in
timed unit tests. Importing this package stays instant; the submodules import torch where they need it.
"""
