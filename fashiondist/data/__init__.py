"""Data sources -> uint8 image arrays, and the splits taken from them.

Torch-free on purpose (device batches and augmentation live in `fashiondist.engine.batches`):
`fashiondist.inference` imports `csvio` from here and must run where only numpy, pyarrow and onnxruntime are
installed. Import the submodules directly:

    from fashiondist.data.sources import load_data        # "sample", "fashion-mnist", or a path
    from fashiondist.data.split import stratified_split    # seeded, stratified, numpy only
    from fashiondist.data.csvio import read_competition_csv, iter_csv_chunks, write_competition_csv
"""
