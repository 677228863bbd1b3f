"""Faces in the wild: detect, align, swap and paste back, on photos and videos.

    detect.py   faces with 5 landmarks: SCRFD (onnxruntime), a landmarks JSON file, or none (aligned)
    align.py    Umeyama similarity to a crop template; warps in pixel-centre coordinates
    blend.py    feathered masks in crop space; inverse warp and masked paste into an RGB frame
    canvas.py   what crops come from and swaps go into: RGB photos, YUV 4:2:0 video frames
    video.py    PyAV decode -> frames -> H.264 encode, timestamps kept, audio copied
    swapper.py  items in -> detect -> align -> batched generator -> paste -> items out, in order

(`make demo`'s pasted-back picture is drawn by demo/faces.py.)

`swapper.swap` drives photos, folders and videos through these; docs/faces.md describes the path.
"""
