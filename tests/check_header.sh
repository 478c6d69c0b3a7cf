#!/bin/sh
# The public header compiles on its own as strict C11 (and as C++ if a C++
# compiler is present).
# usage: check_header.sh CC INCLUDE_DIR
set -eu
cc=$1 inc=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#include "tinkerloss.h"\nint main(void) { return tl_isa_best() < 0; }\n' > "$tmp/a.c"
"$cc" -std=c11 -pedantic -Werror -Wall -Wextra -I "$inc" -c "$tmp/a.c" -o "$tmp/a.o"
"$cc" -std=c11 -pedantic -Werror -Wall -Wextra -fsyntax-only -x c "$inc/tinkerloss.h"
# included twice: the include guard holds
printf '#include "tinkerloss.h"\n#include "tinkerloss.h"\n' > "$tmp/b.c"
"$cc" -std=c11 -pedantic -Werror -I "$inc" -fsyntax-only "$tmp/b.c"
echo "tinkerloss.h compiles alone with -std=c11 -pedantic -Werror"
