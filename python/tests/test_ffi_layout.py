"""The package's declarations are generated from the headers; this checks
what cffi made of them against the C compiler: the size and alignment of
every struct, the offset and size of every field, and every enum value and
integer constant, printed by a C program written from the declarations."""

import os
import subprocess

import tinkerloss as tl
from tinkerloss._lib import ffi


def c_program():
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "tinkerloss_io.h"',
             'int main(void) {']
    want = {}
    for name in ffi.list_types()[0] + ffi.list_types()[1]:
        t = ffi.typeof(name)
        if t.kind != "struct" or t.fields is None:  # opaque (tl_ctx)
            continue
        lines.append(f'printf("{name} %zu %zu\\n", sizeof({name}), _Alignof({name}));')
        want[name] = f"{ffi.sizeof(t)} {ffi.alignof(t)}"
        for field, f in t.fields:
            key = f"{name}.{field}"
            lines.append(f'printf("{key} %zu %zu\\n", offsetof({name}, {field}), '
                         f'sizeof((({name} *)0)->{field}));')
            want[key] = f"{f.offset} {ffi.sizeof(f.type)}"
    for name in ffi.list_types()[0] + ffi.list_types()[1]:
        t = ffi.typeof(name)
        if t.kind == "enum":
            for value, member in t.elements.items():
                lines.append(f'printf("{member} %lld\\n", (long long){member});')
                want[member] = str(value)
    for name in dir(tl.lib):
        if name.startswith("TL_") and isinstance(getattr(tl.lib, name), int) \
                and name not in want:
            lines.append(f'printf("{name} %lld\\n", (long long)({name}));')
            want[name] = str(getattr(tl.lib, name))
    lines += ["return 0;", "}"]
    return "\n".join(lines), want


def test_layout_matches_the_compiler(tmp_path, env_path):
    cc, inc, gen = env_path("TL_CC"), env_path("TL_INCLUDE"), env_path("TL_BUILD_ROOT")
    src, want = c_program()
    assert len(want) > 150 and "tl_finding.message" in want and "TL_MAX_TARGETS" in want
    (tmp_path / "layout.c").write_text(src)
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", inc, "-I", gen, str(tmp_path / "layout.c"), "-o",
                    str(exe)], check=True)
    got = dict(line.split(" ", 1) for line in
               subprocess.run([str(exe)], check=True, capture_output=True,
                              text=True).stdout.splitlines())
    assert got == want
    assert os.path.getsize(exe) > 0
