"""Use and measure a trained generator: swap faces in photos and videos, evaluate, export, convert.

    swap.py      python -m swapper.swap: photos, folders and videos (detect, align, swap, paste back)
    evaluate/    python -m swapper.evaluate: FF++ or aligned pairs, the paper's protocol
    export.py    python -m swapper.export: the generator to ONNX
    convert.py   python -m swapper.convert: the official AlphaFace weights as a generator folder
    images.py    photo I/O and the official eval.py preprocessing
    faces/       detection, alignment, paste-back, video
    metrics/     the metric models and the report

It loads generators through training.artifact and builds networks from training.models, and never
imports the losses or the training loop (tests/test_architecture.py).
"""
