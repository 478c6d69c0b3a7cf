"""The documentation as the tests read it: README.md, then every docs/*.md
in name order, as one text. Every checker of examples (C, Python, shell,
the tinkerloss command, the install commands) finds its blocks in it, so
that an example runs wherever in the documentation it is."""
import glob
import os


def documentation(root):
    paths = [os.path.join(root, "README.md")]
    paths += sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    return "\n".join(texts)
