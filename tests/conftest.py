"""Session-wide test settings: no network, ever.

Set before any test module imports huggingface_hub or transformers, which read these at import.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
