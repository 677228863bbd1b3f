"""`--engine existing`: each sample's caption is the one its source already has; no model runs.

The caption comes from the record's `caption_path` (the official layout's `txt/N.txt`, or a
`<stem>.txt` beside an image in a `folder` source). Everything around it is as in any run: the
stage validates and flags the text as it would an engine's answer, and writes shards, stats,
errors and resumes the same way. A caption that cannot be used is a counted failure:

    caption_missing      the record has no caption file, or it vanished
    caption_unreadable   the file exists but cannot be read (permissions, I/O)
    caption_undecodable  not UTF-8 text (a UTF-8 byte-order mark is allowed and dropped)
    caption_empty        nothing but whitespace
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pipeline.engines.base import EngineInfo, Generation, Prompt
from pipeline.images import BadInput
from pipeline.sources import SourceRecord

# The reading rules' version, recorded in the stats; bump it when what `read` accepts changes.
ENGINE_VERSION = "1"


class ExistingEngine:
    """Reads source captions. It takes records, not images, so the stage calls `read`, not `generate`."""

    def __init__(self, root: Path, source: str) -> None:
        self.root = Path(root)
        # image_size, tiles and tokens are 0: no image is shown to any model
        self.info = EngineInfo("existing", ENGINE_VERSION, f"existing:{source}", 0, 0, 0, "none")

    def read(self, record: SourceRecord) -> Generation:
        """The record's own caption as an answer that ended on its own (`stop`). Raises BadInput."""
        if record.caption_path is None:
            raise BadInput("caption_missing", f"no caption file for {record.source_path}")
        path = self.root / record.caption_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BadInput("caption_missing", f"{record.caption_path} does not exist") from None
        except OSError as e:
            raise BadInput("caption_unreadable", f"{record.caption_path}: {e}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise BadInput("caption_undecodable", f"{record.caption_path}: {e}") from None
        if not text.strip():
            raise BadInput("caption_empty", f"{record.caption_path} holds no text")
        return Generation(text, "stop")

    def generate(self, images: list[Image.Image], prompt: Prompt) -> list[Generation]:
        raise TypeError("the existing engine captions no images: it reads each record's caption file (read)")
