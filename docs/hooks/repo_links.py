"""MkDocs hook: links from a docs page to repository files outside docs/ become plain paths.

Pages link to ``../configs/hopper.yaml`` or ``../benchmarks/...`` so they read well
on GitHub; the site holds only docs/, so such a link would dangle there (and
``mkdocs build --strict`` fails on it). A link whose target exists in the
repository is shown as the path in code; a link to nothing still fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_LINK = re.compile(r"\[([^\]]+)\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    repo = docs.parent
    here = (docs / page.file.src_path).parent

    def replace(match: re.Match[str]) -> str:
        target = (here / match.group(2)).resolve()
        if target.is_relative_to(docs) or not target.is_relative_to(repo) or not target.exists():
            return match.group(0)
        text = match.group(1)
        path = target.relative_to(repo).as_posix()
        return text if text.strip("`") == path else f"{text} (`{path}`)"

    return _LINK.sub(replace, markdown)
