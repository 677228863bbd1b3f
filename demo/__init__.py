"""Demo and test support, not part of the product: synthetic faces, tiny random models, `make demo`.

    python -m demo --out demo_out           the whole flow on CPU (make demo)
    python -m demo.synthetic --out DIR      synthetic faces in the VGGFace2-HQ or CelebA-HQ layout
    python -m demo.tiny_models --out DIR    a tiny random InternVL3 (HF format) and a tiny open_clip config

It lives beside the `pipeline` and `training` packages, is not installed with them, and is the one
place that drives both stages.
"""
