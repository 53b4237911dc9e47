"""MkDocs hook: pages and files the site takes from the repository as they are.

- A nav entry ending in ``/*.md`` (``tutorial/en/*.md``) becomes that folder's pages:
  ``index.md`` first, then the others in file-name order, so new tutorial chapters join
  the nav without editing ``mkdocs.yml``. A pattern matching nothing is left as it is, and
  the strict build fails on it naming the missing pages.
- ``benchmarks/results/*`` (JSON and PNG written by the benchmark scripts) are published
  under ``benchmarks/results/`` so that ``benchmarks.md`` links to the
  recorded files themselves rather than to copies; the marker
  ``<!-- benchmark-results -->`` in ``benchmarks.md`` becomes the list of those files,
  each PNG shown and each Markdown table (``*.md``) included in the page, so a new result appears without
  editing the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

RESULTS = "benchmarks/results"
RESULTS_MARKER = "<!-- benchmark-results -->"
GLOB_SUFFIX = "/*.md"


def _expand(entry: Any, docs: Path) -> Any:
    """``entry`` with every ``dir/*.md`` string replaced by the list of pages it names."""
    if isinstance(entry, list):
        return [_expand(e, docs) for e in entry]
    if isinstance(entry, dict):
        return {k: _expand(v, docs) for k, v in entry.items()}
    if isinstance(entry, str) and entry.endswith(GLOB_SUFFIX):
        folder = entry[: -len(GLOB_SUFFIX)]
        pages = sorted(p.name for p in (docs / folder).glob("*.md"))
        if not pages:
            return entry
        pages.sort(key=lambda name: name != "index.md")  # stable: index first, others by name
        return [f"{folder}/{name}" for name in pages]
    return entry


def on_config(config):
    """Expand the nav's folder patterns."""
    config["nav"] = _expand(config["nav"], Path(config["docs_dir"]))
    return config


def on_files(files, config):
    """Add the recorded benchmark results to the site."""
    root = Path(config["config_file_path"]).parent
    for path in sorted((root / RESULTS).glob("*")):
        if path.is_file() and path.suffix != ".md":  # tables are included in benchmarks.md instead
            files.append(File.generated(config, f"{RESULTS}/{path.name}", abs_src_path=str(path)))
    return files


def _results_markdown(root: Path) -> str:
    """One subsection per result (a file stem): its files linked, its plot shown, its table included."""
    stems: dict[str, list[Path]] = {}
    for path in sorted((root / RESULTS).glob("*")):
        if path.is_file():
            stems.setdefault(path.stem, []).append(path)
    out = []
    for stem, paths in stems.items():
        links = " · ".join(f"`{p.name}` (below)" if p.suffix == ".md" else f"[`{p.name}`]({RESULTS}/{p.name})"
                           for p in paths)
        out += [f"### `{stem}`", "", f"Files: {links}", ""]
        for p in paths:
            if p.suffix == ".png":
                out += [f"![{stem}]({RESULTS}/{p.name})", ""]
            elif p.suffix == ".md":
                # Demote the table's own headings below this subsection's.
                text = "\n".join("###" + line if line.startswith("#") else line for line in p.read_text().splitlines())
                out += [text, ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Fill the results marker of ``benchmarks.md``."""
    if page.file.src_uri != "benchmarks.md":
        return markdown
    if RESULTS_MARKER not in markdown:
        raise ValueError(f"docs/benchmarks.md lost its marker {RESULTS_MARKER}")
    return markdown.replace(RESULTS_MARKER, _results_markdown(Path(config["config_file_path"]).parent))
