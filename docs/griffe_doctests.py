"""A Griffe extension for the API reference: the docstrings' `>>>` examples
become Python code blocks.

Keras-format docstrings put their examples after an `Example:` line without
indenting them, so the Google parser reads them as prose, and Markdown then
mistakes their printed lists for links. This fences each run of `>>>` /
`...` lines and their printed output (up to the next blank line).
"""

import griffe


def fence_doctests(text: str) -> str:
    lines, out, index = text.split("\n"), [], 0
    while index < len(lines):
        line = lines[index]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            index += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.append(f"{indent}```pycon")
        while index < len(lines) and lines[index].strip():
            out.append(lines[index])
            index += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class FenceDoctests(griffe.Extension):
    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
