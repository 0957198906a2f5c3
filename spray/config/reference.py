"""The config reference in docs/config.md, generated from the pydantic models.

The tables between the markers ``<!-- reference:start -->`` and ``<!-- reference:end -->`` are
written by ``python -m spray.config.reference docs/config.md``; ``tests/test_config.py`` checks
that the committed file is current, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json
import re
import typing
from pathlib import Path

from pydantic import BaseModel

from spray.config.presets import PipelineModel
from spray.config.run_config import RunConfig

START, END = "<!-- reference:start -->", "<!-- reference:end -->"


def _type_name(annotation) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = text.replace("typing.", "").replace("NoneType", "None")
    text = re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return re.sub(r"\b(?:[a-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return "`" + json.dumps(value, default=str) + "`"


def _nested(annotation) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _first_line(doc: str | None) -> str:
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return re.sub(r":\w+:`([^`]+)`", r"`\1`", text).replace("``", "`")


def _tables(model: type[BaseModel], prefix: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{prefix}`" if prefix else f"{'#' * level} top level", "",
             _first_line(model.__doc__), "", "| key | type | default |", "|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        sub = _nested(field.annotation)
        key = f"{prefix}.{name}" if prefix else name
        if sub is not None and sub is not model:
            nested.append((sub, key))
        lines.append(f"| `{name}` | {_type_name(field.annotation).replace('|', '&#124;')} | "
                     f"{_default(field).replace('|', '&#124;')} |")
    lines.append("")
    for sub, key in nested:
        lines += _tables(sub, key, level + 1)
    return lines


def reference_markdown() -> str:
    """The generated reference: the run config and the analysis pipeline preset."""
    lines = ["## Run config (`spray run CONFIG`)", ""] + _tables(RunConfig, "", 3)
    lines += ["## Analysis pipeline (`pipeline:` in a run config, or a preset YAML)", ""]
    lines += _tables(PipelineModel, "", 3)
    return "\n".join(lines).rstrip() + "\n"


def render(path: Path) -> str:
    """The text of ``path`` with its generated block replaced by the current reference."""
    text = path.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{reference_markdown()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path, help="markdown file holding the reference markers")
    args = parser.parse_args(argv)
    args.path.write_text(render(args.path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
